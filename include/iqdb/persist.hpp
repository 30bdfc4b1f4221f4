// iqdb-persist: durable, crash-safe persistence for vector-search indexes.
// The umbrella header: includes the whole public API.
#pragma once

#include "iqdb/persist/checksum.hpp"
#include "iqdb/persist/config.hpp"
#include "iqdb/persist/error.hpp"
#include "iqdb/persist/file_system.hpp"
#include "iqdb/persist/flat_index.hpp"
#include "iqdb/persist/format.hpp"
#include "iqdb/persist/index.hpp"
#include "iqdb/persist/io.hpp"
#include "iqdb/persist/persisted_index.hpp"
#include "iqdb/persist/replica.hpp"
#include "iqdb/persist/snapshot.hpp"
#include "iqdb/persist/types.hpp"
#include "iqdb/persist/version.hpp"
#include "iqdb/persist/wal.hpp"
#include "iqdb/persist/write_batch.hpp"
