// Reading write-ahead logs (internal entry point used by scan_log and replay).
#pragma once

#include <functional>

#include "iqdb/persist/file_system.hpp"
#include "iqdb/persist/wal.hpp"

namespace iqdb::persist::wal {

ScanResult scan_file(const ReadableFile& file, const std::function<void(const RecordView&)>& on_record, ScanMode mode);

}  // namespace iqdb::persist::wal
