// `iqdb-persist wal repair rados://POOL/NAME` (internal to iqdb_persist_cli):
// cut the log of the published generation after its last valid frame,
// knowingly, under the writer lock. docs/DISTRIBUTED.md, "The command line
// on RADOS"; the objects: docs/FORMAT.md, "RADOS objects of the write-ahead
// log".
#pragma once

#include "iqdb-persist/command.hpp"
#include "iqdb-persist/location.hpp"

namespace iqdb::persist::cli {

// Looks at the log (read only) and says what a repair drops: the frames
// after the last valid one, and the log objects after the consistent ones
// (an object cut short or grown, a missing one, malformed attributes). With
// `yes`: takes the writer lock first (Locked while a live writer holds it),
// cuts the log (rados_detail::cut_log) and reads it again. Exit 0 repaired
// or nothing to repair, 1 a dry run that found damage.
int repair_rados_log(const Location& where, bool yes, const Console& console);

}  // namespace iqdb::persist::cli
