// The single-writer lock: one process at a time writes an index. The
// storage takes it and readies the files for this writer (local files:
// PATH.lock, docs/FORMAT.md, and the temporaries of crashed saves removed;
// RADOS: the fenced writer lock, docs/DISTRIBUTED.md).
#include "wal/engine_impl.hpp"

namespace iqdb::persist::detail {

void WalEngine::Impl::lock_and_clean() { lock_ = storage_->lock_writer(); }

}  // namespace iqdb::persist::detail
