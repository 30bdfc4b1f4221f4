// The write-ahead log's byte layouts (internal): constants with named offsets,
// and the one encoder and decoder of each layout (log header, frame header,
// v2 body prefix). The grammar, a worked example and the reasons for each
// field are in docs/FORMAT.md ("Write-ahead log", "Version 2"); ops are
// encoded in record_codec.cpp.
//
//   log      := header frame* zero-padding*
//   header   := v1: magic[8] version:u32(=1)                                  (12 bytes)
//               v2: magic[8] version:u32(=2) header_len:u32(=40) salt:u64
//                   base_lsn:u64 required_flags:u32 header_crc:u32             (40 bytes)
//   frame    := length:u32 crc:u32 body[length]
//   v1 body  := op
//   v2 body  := first_lsn:u64 count:u32 synced_lsn:u64 op{count}
//   op       := 1 vector_id vec_len:u32 f32{vec_len} has_meta:u8 [n:u32 (key value){n}]
//             | 2 vector_id
//
// v1 crc = CRC-32(body). v2 crc = CRC-32(salt:u64 length:u32 body): the salt
// ties every frame to one log generation, the length is covered so a damaged
// length field cannot pass. synced_lsn is the highest LSN the writer knew to be
// durable (fsynced) when it wrote the frame: a damaged frame followed by intact
// frames is corruption only if one of them vouches that it had been made
// durable; otherwise it is the torn tail of writes a power loss persisted out
// of order.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <vector>

#include "util/coding.hpp"

namespace iqdb::persist::wal::format {

inline constexpr std::array<char, 8> MAGIC = {'I', 'Q', 'D', 'B', 'W', 'A', 'L', '\0'};

// ---- Log header (docs/FORMAT.md, "Write-ahead log" / "Version 2", header table)
inline constexpr std::uint32_t kV1HeaderLen = 12;  // magic, version
inline constexpr std::uint32_t kV2HeaderLen = 40;
inline constexpr std::size_t kVersionOffset = 8;         // u32
inline constexpr std::size_t kHeaderLenOffset = 12;      // u32 (v2: 40)
inline constexpr std::size_t kSaltOffset = 16;           // u64
inline constexpr std::size_t kBaseLsnOffset = 24;        // u64
inline constexpr std::size_t kRequiredFlagsOffset = 32;  // u32
inline constexpr std::size_t kHeaderCrcOffset = 36;      // u32: CRC-32 of bytes [0, 36)
inline constexpr std::uint32_t kV2KnownRequiredFlags = 0;

// ---- Frame (docs/FORMAT.md, "Version 2", frames table)
inline constexpr std::uint32_t kFrameHeaderLen = 8;
inline constexpr std::size_t kFrameLenOffset = 0;  // u32: the body's length
inline constexpr std::size_t kFrameCrcOffset = 4;  // u32
// v2 body prefix, offsets from the body's start.
inline constexpr std::uint32_t kV2BodyPrefixLen = 20;
inline constexpr std::size_t kFirstLsnOffset = 0;    // u64
inline constexpr std::size_t kCountOffset = 8;       // u32: records in the frame
inline constexpr std::size_t kSyncedLsnOffset = 12;  // u64
// Smallest op: erase of a u64 id = op 1 + kind 1 + u64 8.
inline constexpr std::uint32_t kMinOpLen = 10;

inline constexpr std::uint8_t kIdU64 = 0;
inline constexpr std::uint8_t kIdBytes = 1;

// A log header as read by decode_header (every field checked).
struct LogHeader {
  std::uint32_t version = 0;
  std::uint64_t salt = 0;      // v2
  std::uint64_t base_lsn = 0;  // v2
  std::uint64_t len = 0;       // where the first frame starts
};

std::array<std::byte, kV2HeaderLen> encode_v2_header(std::uint64_t salt, std::uint64_t base_lsn);
// `first` holds the log's first min(file_size, kV2HeaderLen) bytes. Throws
// PersistError (BadMagic, UnsupportedVersion, TruncatedHeader, ChecksumMismatch,
// InvalidHeader, Unsupported) naming `path` and the offset.
LogHeader decode_header(std::span<const std::byte> first, std::uint64_t file_size, const std::filesystem::path& path);

// What a log's first bytes say, unchecked: for hints and bounds only, never
// for replay (decode_header and the reader check everything).
struct LogPeek {
  std::uint64_t base_lsn = 0;     // v2 (0: not a v2 header)
  std::uint64_t header_len = 0;
  std::uint64_t first_frame = 0;  // the first frame's length with its header (0: none)
  std::uint64_t first_count = 1;  // records in it (v2)
};
inline constexpr std::size_t kPeekLen = kV2HeaderLen + kFrameHeaderLen + kSyncedLsnOffset;
// `first`: up to kPeekLen bytes from the log's start.
LogPeek peek(std::span<const std::byte> first) noexcept;

// CRC of a v2 frame: CRC-32(salt, length, body).
std::uint32_t frame_crc_v2(std::uint64_t salt, std::uint32_t length, const std::byte* body) noexcept;

struct FrameHeader {
  std::uint32_t len = 0;
  std::uint32_t crc = 0;
};
inline FrameHeader decode_frame_header(const std::byte* p) noexcept {
  return {coding::get<std::uint32_t>(p + kFrameLenOffset), coding::get<std::uint32_t>(p + kFrameCrcOffset)};
}

struct V2BodyPrefix {
  std::uint64_t first_lsn = 0;
  std::uint32_t count = 0;
  std::uint64_t synced_lsn = 0;
};
inline V2BodyPrefix decode_v2_body_prefix(const std::byte* body) noexcept {
  return {coding::get<std::uint64_t>(body + kFirstLsnOffset), coding::get<std::uint32_t>(body + kCountOffset),
          coding::get<std::uint64_t>(body + kSyncedLsnOffset)};
}

// Start a v2 frame of `count` records in `frame` (cleared; its capacity
// kept): frame header and body prefix, to be filled in by seal_v2_frame once
// the ops are appended.
inline void begin_v2_frame(std::vector<std::byte>& frame, std::uint32_t count) {
  frame.assign(kFrameHeaderLen + kV2BodyPrefixLen, std::byte{0});
  coding::store<std::uint32_t>(frame.data() + kFrameHeaderLen + kCountOffset, count);
}
// Fill in a begun frame's LSNs, then its length and CRC.
inline void seal_v2_frame(std::vector<std::byte>& frame, std::uint64_t salt, std::uint64_t first_lsn,
                          std::uint64_t synced_lsn) noexcept {
  std::byte* body = frame.data() + kFrameHeaderLen;
  coding::store<std::uint64_t>(body + kFirstLsnOffset, first_lsn);
  coding::store<std::uint64_t>(body + kSyncedLsnOffset, synced_lsn);
  const auto len = static_cast<std::uint32_t>(frame.size() - kFrameHeaderLen);
  coding::store<std::uint32_t>(frame.data() + kFrameLenOffset, len);
  coding::store<std::uint32_t>(frame.data() + kFrameCrcOffset, frame_crc_v2(salt, len, body));
}

}  // namespace iqdb::persist::wal::format
