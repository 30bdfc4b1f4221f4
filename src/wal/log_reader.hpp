// Reading write-ahead logs (internal entry point used by scan_log and replay).
#pragma once

#include <functional>

#include "iqdb/persist/file_system.hpp"
#include "iqdb/persist/wal.hpp"

namespace iqdb::persist::wal {

ScanResult scan_file(const ReadableFile& file, const std::function<void(const RecordView&)>& on_record, ScanMode mode);

// CRC of a v2 frame: CRC-32(salt, length, body).
std::uint32_t frame_crc_v2(std::uint64_t salt, std::uint32_t length, const std::byte* body) noexcept;

}  // namespace iqdb::persist::wal
