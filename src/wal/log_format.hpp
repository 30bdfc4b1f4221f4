// Write-ahead log constants (internal). The grammar, a worked example and the
// reasons for each field are in docs/FORMAT.md ("Write-ahead log").
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
#include <cstdint>

namespace iqdb::persist::wal::format {

inline constexpr std::array<char, 8> MAGIC = {'I', 'Q', 'D', 'B', 'W', 'A', 'L', '\0'};

inline constexpr std::uint32_t kV1HeaderLen = 12;
// v2 header: magic 8 | version u32 | header_len u32 | salt u64 | base_lsn u64 |
// required_flags u32 | header_crc u32  = 40 bytes.
inline constexpr std::uint32_t kV2HeaderLen = 40;
inline constexpr std::uint32_t kV2KnownRequiredFlags = 0;

inline constexpr std::uint32_t kFrameHeaderLen = 8;  // length u32 + crc u32
inline constexpr std::uint32_t kV2BodyPrefixLen = 20;  // first_lsn u64 + count u32 + synced_lsn u64
// Smallest op: erase of a u64 id = op 1 + kind 1 + u64 8.
inline constexpr std::uint32_t kMinOpLen = 10;

inline constexpr std::uint8_t kIdU64 = 0;
inline constexpr std::uint8_t kIdBytes = 1;

}  // namespace iqdb::persist::wal::format
