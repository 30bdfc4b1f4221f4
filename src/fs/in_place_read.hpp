// Internal: a ReadableFile that fills a large destination in place and says
// when each piece has landed (the RADOS stripe reader: parallel reads
// straight into the caller's memory, docs/DISTRIBUTED.md, "Reading").
//
// The snapshot reader asks for it with dynamic_cast: a file that offers it
// gets each large read of the payload (the vector block) as one call with
// the whole destination, and the snapshot's CRC joins each piece's CRC as
// it is reported: the bytes are checksummed once, for the stripe and the
// snapshot together. Files that do not offer it (local files) are read in
// 2 MiB calls of read_at, as before.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>

namespace iqdb::persist::detail {

class InPlaceRead {
 public:
  // Called once per piece, in file order, when the piece is in the
  // destination and the storage's own checks of it passed, with the CRC of
  // the piece's bytes (checksum::compute(piece)), which the storage computed
  // for its own checks: the caller joins it into its CRC
  // (checksum::combine) instead of reading the bytes a second time.
  using Landed = std::function<void(std::span<const std::byte> piece, std::uint32_t piece_crc)>;

  // As ReadableFile::read_at (up to dst.size() bytes at `offset`, fewer only
  // at the end of the file; errors are thrown), calling `landed` for
  // consecutive pieces that together make up the bytes read. On an error,
  // the pieces reported before it stay reported; the rest of `dst` is
  // unspecified.
  virtual std::size_t read_in_place(std::uint64_t offset, std::span<std::byte> dst, const Landed& landed) const = 0;

 protected:
  InPlaceRead() = default;
  InPlaceRead(const InPlaceRead&) = default;
  InPlaceRead& operator=(const InPlaceRead&) = default;
  ~InPlaceRead() = default;
};

}  // namespace iqdb::persist::detail
