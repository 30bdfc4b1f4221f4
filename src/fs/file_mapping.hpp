// Mapping a block of a snapshot file for a mapped load (internal): the
// file's bytes in place, private (copy-on-write) and writable, with
// anonymous address space reserved behind them for growth. docs/API.md,
// "Mapped load", says what this promises and what it cannot.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>

#include "iqdb/persist/io.hpp"

namespace iqdb::persist::detail {

// The page size every mapped block is aligned to (docs/FORMAT.md, "The flat
// payload": the vectors start at a multiple of it in the file).
inline constexpr std::size_t kMapPage = 4096;

// Map [offset, offset + size) of the open file `fd` (a regular file of at
// least offset + size bytes) as a MappedBlock of `reserve` bytes (at least
// size), its pages faulted in for reading. Returns an empty block when the
// range is not page aligned or the system refuses a mapping (the caller
// copies instead); throws PersistError(TruncatedPayload) naming `path` when
// the file shrank below the range meanwhile. Keeps a duplicate of fd open
// for check_mapped_origin.
MappedBlock map_file_block(int fd, const std::filesystem::path& path, std::uint64_t offset, std::size_t size,
                           std::size_t reserve);

}  // namespace iqdb::persist::detail
