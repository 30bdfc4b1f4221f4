#include "iqdb-persist/snapshot_tee.hpp"

#include <algorithm>
#include <span>
#include <string>
#include <vector>

#include "iqdb/persist/error.hpp"

namespace iqdb::persist::cli {
namespace {

// Gap fills (bytes the reader skipped) are copied in pieces of this size.
constexpr std::size_t kGapChunk = std::size_t{1} << 20;

// A view of an open file; reads past what the sink holds are appended to it.
class TeeFile final : public ReadableFile {
 public:
  TeeFile(const ReadableFile& file, WritableFile* sink, TeeState& state)
      : file_(file), sink_(sink), state_(state) {}

  std::size_t read_at(std::uint64_t offset, std::span<std::byte> dst) const override {
    if (sink_ != nullptr && offset > state_.written) fill_gap(offset);
    const std::size_t got = file_.read_at(offset, dst);
    if (sink_ != nullptr && offset + got > state_.written) {
      const auto skip = static_cast<std::size_t>(state_.written - offset);
      append(std::span<const std::byte>(dst.data() + skip, got - skip));
    }
    return got;
  }
  std::uint64_t size() const noexcept override { return file_.size(); }
  const std::filesystem::path& path() const noexcept override { return file_.path(); }

 private:
  void append(std::span<const std::byte> bytes) const {
    try {
      sink_->append(bytes);
    } catch (...) {
      state_.sink_failed = true;
      throw;
    }
    state_.written += bytes.size();
  }

  // The reader jumped ahead: copy the bytes it skipped first.
  void fill_gap(std::uint64_t until) const {
    std::vector<std::byte> buf(static_cast<std::size_t>(std::min<std::uint64_t>(kGapChunk, until - state_.written)));
    while (state_.written < until) {
      const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), until - state_.written));
      const std::size_t got = file_.read_at(state_.written, std::span<std::byte>(buf.data(), n));
      if (got != n) {
        throw PersistError::at(ErrorKind::TruncatedPayload, file_.path(), "the file shrank while being copied",
                               state_.written + got);
      }
      append(std::span<const std::byte>(buf.data(), n));
    }
  }

  const ReadableFile& file_;
  WritableFile* sink_;
  TeeState& state_;
};

}  // namespace

std::unique_ptr<ReadableFile> OpenFileSystem::open_read(const std::filesystem::path& /*path*/) {
  return std::make_unique<TeeFile>(file_, sink_, state_);
}

void OpenFileSystem::check_complete() const {
  if (state_.written != file_.size()) {
    throw PersistError::at(ErrorKind::InvalidPayload, file_.path(),
                           "the snapshot was verified but only " + std::to_string(state_.written) + " of its " +
                               std::to_string(file_.size()) + " bytes were read");
  }
}

}  // namespace iqdb::persist::cli
