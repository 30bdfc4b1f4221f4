// The one audited function that replaces a file atomically.
#include "fs/temp_name.hpp"
#include "iqdb/persist/error.hpp"
#include "iqdb/persist/file_system.hpp"

namespace iqdb::persist {

void replace_file_atomically(FileSystem& fs, const std::filesystem::path& target, bool durable,
                             const std::function<void(WritableFile&)>& fill) {
  const std::filesystem::path dir = target.parent_path();
  // Hidden, in the same directory (rename must not cross file systems).
  const std::filesystem::path temp = dir / detail::temp_name(target.filename().string(), fs.random_u64());

  std::unique_ptr<WritableFile> file = fs.create_exclusive(temp);
  try {
    fill(*file);
    if (durable) file->sync();
    file->close();
    file.reset();
    fs.rename(temp, target);
  } catch (...) {
    file.reset();  // closes the descriptor, if still open
    try {
      fs.remove(temp);
    } catch (...) {
      // The original error matters more; the stray temp file is hidden and
      // named so that an operator can see what it is.
    }
    throw;
  }
  if (durable) fs.sync_dir(dir);
}

}  // namespace iqdb::persist
