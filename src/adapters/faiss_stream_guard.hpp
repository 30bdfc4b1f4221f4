// FaissStreamGuard: follows FAISS's own serialization, byte by byte, as it
// passes between FAISS and iqdb-persist, and refuses what the adapter does not
// support or cannot bound (internal to the FAISS adapter).
//
// Why: faiss::read_index trusts the counts it reads. READVECTOR reads a u64
// count, resizes a std::vector to it (zero-filling up to 2^40 elements), and
// only then reads the elements; ArrayInvertedLists resizes every list to the
// sizes it read before reading any code. A damaged or crafted payload would
// make it allocate (and touch) far more memory than the payload holds, before
// the snapshot's CRC, which is checked at the end of the stream, could say
// the bytes are bad. The guard sees every byte FAISS is handed before FAISS
// sees it (the adapter's faiss::IOReader feeds it first), knows the grammar of
// the supported index types, and throws PersistError(InvalidPayload) as soon
// as a count exceeds what the rest of the payload can hold, a fourcc names a
// type the adapter does not support (so FAISS never runs the reader of, e.g.,
// OnDiskInvertedLists, which opens a file named in the stream), or a field
// contradicts another. FAISS therefore allocates at most a small constant
// times the payload's size. Writing runs the same guard over what
// faiss::write_index produces, so a snapshot that saved is one that loads.
//
// The grammar (FAISS 1.7.x, little-endian, as written by write_index):
//   index   := fourcc u32, then by fourcc:
//     IxF2 | IxFI | IxFl      header, xb                          (IndexFlatL2 / IP / other metric)
//     IHNf                    header, hnsw, index(storage: flat)  (IndexHNSWFlat)
//     IwFl                    header, nlist u64, nprobe u64, index(quantizer: flat | IHNf),
//                             direct_map, invlists                (IndexIVFFlat)
//     IxMp | IxM2             header, index(sub), vec<i64> id_map (IndexIDMap / IndexIDMap2)
//   header  := d i32, ntotal i64, dummy i64, dummy i64, is_trained u8, metric i32,
//              [metric_arg f32 when metric > 1]
//   xb      := n u64 (in units of 4 bytes), 4n bytes
//   hnsw    := vec<f64> assign_probas, vec<i32> cum_nneighbor_per_level, vec<i32> levels,
//              vec<u64> offsets, vec<i32> neighbors, entry_point i32, max_level i32,
//              efConstruction i32, efSearch i32, upper_beam i32
//   direct_map := type u8 (0 none, 1 array, 2 hashtable), vec<i64> array,
//              [vec<(i64, i64)> hashtable when type = 2]
//   invlists := "ilar", nlist u64, code_size u64, ("full", vec<u64> sizes | "sprs",
//              vec<u64> (list, size) pairs), then per non-empty list its codes and ids
//   vec<T>  := n u64, n x sizeof(T) bytes
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace iqdb::persist::adapters::detail {

class FaissStreamGuard {
 public:
  // Deepest nesting accepted (IDMap > IVF > HNSW quantizer > flat storage is 4).
  static constexpr int kMaxDepth = 6;
  // Passed as `bytes_after` when writing: the rest of the stream is unknown.
  static constexpr std::uint64_t kUnknown = ~std::uint64_t{0};

  // `reading`: the stream comes from a snapshot (errors are InvalidPayload)
  // rather than from faiss::write_index (errors are Unsupported).
  // `capture`: reading for faiss::read_index, with storage capture (below).
  explicit FaissStreamGuard(bool reading, bool capture = false);

  // The next `n` bytes of the stream. `bytes_after`: how many payload bytes
  // follow them (exact when reading; kUnknown when writing). Throws
  // PersistError on the first byte that breaks the grammar or a bound.
  void feed(const void* data, std::size_t n, std::uint64_t bytes_after);

  // The stream ended here: throws unless the index it holds is complete.
  void finish();

  // Storage capture (reading only). The codes of an IndexFlat that stores
  // the vectors (a bare IndexFlat, the sub-index of an IndexIDMap, the
  // storage of an IndexHNSWFlat; not an IVF's quantizer) are read by the
  // adapter itself, into a vector advised for huge pages that it then moves
  // into the IndexFlat, instead of FAISS zero-filling one with 4 KiB pages
  // and copying into it (touching fresh memory is most of what loading a
  // flat index costs). FAISS is shown 0 for that IndexFlat's vector count and
  // storage size: hidden() lists the byte ranges of the last feed() to zero
  // in the copy FAISS gets. take_capture() returns the size of codes that
  // start at the current position and are to be captured (once; nullopt if
  // none): the adapter reads them, before FAISS's next read or after
  // read_index returns, and feeds them here. An IndexIDMap2's vector count
  // is hidden as well (FAISS then builds no reverse map; the adapter does).
  const std::vector<std::pair<std::size_t, std::size_t>>& hidden() const noexcept { return hidden_; }
  std::optional<std::uint64_t> take_capture() noexcept { return std::exchange(capture_bytes_, std::nullopt); }

 private:
  enum class Kind : std::uint8_t { None, Flat, Hnsw, Ivf, IdMap };
  // Fields whose value the guard looks at (others are skipped).
  enum class Field : std::uint8_t {
    Fourcc,
    HeaderD,
    HeaderNtotal,
    HeaderDummy,
    HeaderTrained,
    HeaderMetric,
    HeaderMetricArg,
    XbCount,
    VecCount,
    I32,
    IvfNlist,
    IvfNprobe,
    DirectMapType,
    InvlistsFourcc,
    InvlistsNlist,
    InvlistsCodeSize,
    InvlistsListType,
  };
  enum class Check : std::uint8_t { FlatDone, HnswDone, IvfQuantizerDone, IdMapSubDone, SizesDone };
  // What a vector's count is: decides the checks and what follows it.
  enum class VecRole : std::uint8_t { Plain, IdMap, DirectMapArray, DirectMapHashtable, SizesFull, SizesSparse };
  enum class Op : std::uint8_t { Index, Field, Skip, U64Array, Check };

  struct Node {
    Kind kind = Kind::None;
    std::uint32_t fourcc = 0;
    int depth = 0;
    std::size_t parent = ~std::size_t{0};
    bool capture = false;  // its codes are captured (see take_capture())
    std::int64_t d = 0;
    std::int64_t ntotal = 0;
    std::int32_t metric = 0;
    std::size_t child = 0;  // index in nodes_ of the last nested index
    // IVF only.
    std::uint64_t nlist = 0;
    std::uint8_t dm_type = 0;
    std::uint64_t code_size = 0;
    std::uint64_t list_total = 0;  // sum of the list sizes
    std::uint64_t last_list = 0;   // sparse sizes: the previous list number + 1
  };

  struct Step {
    Op op;
    Field field = Field::Fourcc;
    std::uint8_t width = 0;  // Field: bytes
    bool hide = false;       // Field: shown to FAISS as zeros (see hidden())
    VecRole role = VecRole::Plain;
    std::uint32_t elem = 0;  // Field VecCount: element size
    Check check = Check::FlatDone;
    std::size_t node = 0;
    std::uint64_t count = 0;  // Skip: bytes left; U64Array: elements left
    std::uint64_t index = 0;  // U64Array: elements done
  };

  static Step at(Op op, std::size_t node) {
    Step s{op};
    s.node = node;
    return s;
  }
  static Step field(Field f, std::uint8_t width, std::size_t node) {
    Step s = at(Op::Field, node);
    s.field = f;
    s.width = width;
    return s;
  }
  static Step vec(VecRole role, std::uint32_t elem, std::size_t node) {
    Step s = field(Field::VecCount, 8, node);
    s.role = role;
    s.elem = elem;
    return s;
  }
  static Step check(Check c, std::size_t node) {
    Step s = at(Op::Check, node);
    s.check = c;
    return s;
  }
  static Step skip(std::uint64_t bytes) {
    Step s{Op::Skip};
    s.count = bytes;
    return s;
  }
  static Step index(std::size_t parent) { return at(Op::Index, parent); }
  static Step u64_array(VecRole role, std::uint64_t n, std::size_t node) {
    Step s = at(Op::U64Array, node);
    s.role = role;
    s.count = n;
    return s;
  }

  // Schedule `steps` to come next, in the order given.
  void then(const std::vector<Step>& steps);
  static void add_header(std::vector<Step>& seq, std::size_t node);
  static std::uint8_t value_width(const Step& s) noexcept;
  std::size_t buffer_value(const Step& top, const unsigned char* p, std::size_t left, std::size_t at);
  void on_value(std::size_t left);
  void on_field(const Step& s, std::uint64_t v);
  void on_header_field(const Step& s, std::uint64_t v);
  void on_flat_storage(const Step& s, std::uint64_t v);
  void on_ivf_field(const Step& s, std::uint64_t v);
  void on_invlists_field(const Step& s, std::uint64_t v);
  void on_vec_count(const Step& s, std::uint64_t n);
  void on_u64_element(Step& s, std::uint64_t v);
  void on_check(const Step& s);
  void on_fourcc(std::size_t node, std::uint32_t fourcc);
  [[noreturn]] void fail(const std::string& why) const;

  void drain();
  static constexpr std::size_t kNoParent = ~std::size_t{0};

  std::vector<Step> stack_;  // back() comes next
  std::vector<Node> nodes_;
  bool reading_;
  bool capture_;
  std::uint64_t remaining_ = kUnknown;  // payload bytes after the current position
  std::uint64_t offset_ = 0;            // bytes of the FAISS stream seen so far
  unsigned char buf_[8] = {};
  std::uint8_t have_ = 0;
  std::vector<std::pair<std::size_t, std::size_t>> hidden_;  // (start, length) in the last feed()
  std::optional<std::uint64_t> capture_bytes_;
};

}  // namespace iqdb::persist::adapters::detail
