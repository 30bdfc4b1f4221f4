#include "support/format_builders.hpp"

#include <gtest/gtest.h>
#include <lz4.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <cstring>

namespace iqdb::persist::test {

using Buf = std::vector<std::byte>;

std::uint32_t zcrc(const std::byte* p, std::size_t n) {
  return static_cast<std::uint32_t>(crc32_z(0, reinterpret_cast<const Bytef*>(p), n));
}
std::uint32_t zcrc(const Buf& b) { return zcrc(b.data(), b.size()); }

// ---------------------------------------------------------------- snapshots, versions 1 and 2

Buf v12_header(std::uint32_t version, const HeaderFields& f, std::uint32_t crc) {
  Bytes b;
  b.str("IQDBPRST").u32(version).u64(f.tag.size()).str(f.tag).u64(f.dim).u8(f.metric).u64(f.n).u32(crc);
  return b.data();
}

Buf v1_file(const HeaderFields& f, const Buf& payload) {
  Buf out = v12_header(1, f, zcrc(payload));
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

Buf v2_region(std::uint8_t scheme, std::uint64_t ulen, const Buf& stored) {
  Bytes r;
  r.u8(scheme).u64(ulen).append(stored);
  return r.data();
}

Buf v2_file(const HeaderFields& f, std::uint8_t scheme, std::uint64_t ulen, const Buf& stored) {
  const Buf region = v2_region(scheme, ulen, stored);
  Buf out = v12_header(2, f, zcrc(region));
  out.insert(out.end(), region.begin(), region.end());
  return out;
}

// ---------------------------------------------------------------- snapshot version 3

Buf v3_header(const V3Fields& v) {
  Bytes b;
  b.str("IQDBPRST")
      .u32(3)
      .u32(v.header_len.value_or(static_cast<std::uint32_t>(78 + v.f.tag.size())))
      .u32(v.required)
      .u32(v.optional)
      .u32(v.tag_len.value_or(static_cast<std::uint32_t>(v.f.tag.size())))
      .str(v.f.tag)
      .u64(v.f.dim)
      .u8(v.f.metric)
      .u8(v.compression)
      .u64(v.f.n)
      .u64(v.last_lsn)
      .u64(v.ulen)
      .u64(v.stored_len)
      .u32(v.payload_crc);
  b.u32(v.header_crc ? *v.header_crc : zcrc(b.data()));
  return b.data();
}

Buf v3_file(V3Fields v, std::uint64_t ulen, const Buf& stored) {
  v.ulen = ulen;
  v.stored_len = stored.size();
  v.payload_crc = zcrc(stored);
  Buf out = v3_header(v);
  out.insert(out.end(), stored.begin(), stored.end());
  return out;
}

void fix_v3_header_crc(Buf& file) {
  std::uint32_t header_len = 0;
  std::memcpy(&header_len, file.data() + 12, 4);
  const std::uint32_t crc = zcrc(file.data(), header_len - 4);
  std::memcpy(file.data() + header_len - 4, &crc, 4);
}

// ---------------------------------------------------------------- the flat payload

void put_value(Bytes& b, const Value& v) {
  switch (v.kind()) {
    case Value::Kind::String: b.u8(0).u32(static_cast<std::uint32_t>(v.as_string().size())).str(v.as_string()); break;
    case Value::Kind::Int: b.u8(1).i64(v.as_int()); break;
    case Value::Kind::Float: b.u8(2).f64(v.as_float()); break;
    case Value::Kind::Bool: b.u8(3).u8(v.as_bool() ? 1 : 0); break;
    case Value::Kind::Null: b.u8(4); break;
  }
}

void put_id(Bytes& b, const VectorId& id) {
  if (id.is_u64()) {
    b.u8(0).u64(id.as_u64());
  } else {
    b.u8(1).u64(id.as_bytes().size()).str(id.as_bytes());
  }
}

Buf flat_payload(std::uint64_t dim, std::uint8_t metric, const std::vector<FlatRow>& rows, bool tagged_ids) {
  Bytes b;
  b.u32(1).u64(dim).u8(metric).u64(rows.size()).u8(tagged_ids ? 1 : 0);
  for (const FlatRow& r : rows) {
    if (tagged_ids) {
      put_id(b, r.id);
    } else {
      b.u64(r.id.as_u64());
    }
  }
  std::uint64_t with_meta = 0;
  for (const FlatRow& r : rows) with_meta += r.meta ? 1 : 0;
  b.u64(with_meta);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    if (!rows[i].meta) continue;
    b.u64(i).u32(static_cast<std::uint32_t>(rows[i].meta->size()));
    for (const auto& [key, value] : *rows[i].meta) {  // std::map: ascending keys
      b.u32(static_cast<std::uint32_t>(key.size())).str(key);
      put_value(b, value);
    }
  }
  for (const FlatRow& r : rows) {
    for (const float x : r.vec) b.f32(x);
  }
  return b.data();
}

// ---------------------------------------------------------------- compressors

Buf zstd_stream(const Buf& in, bool with_checksum, ZstdFeed feed) {
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  EXPECT_FALSE(ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, 3)));
  EXPECT_FALSE(ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, with_checksum ? 1 : 0)));
  // Fed in pieces the size is unknown anyway; the flag also covers an empty input,
  // for which a first ZSTD_e_end call would otherwise record content size 0.
  EXPECT_FALSE(ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 0)));
  Buf out;
  Buf chunk(ZSTD_CStreamOutSize());
  std::size_t pos = 0;
  const auto drive = [&](ZSTD_inBuffer& ib, ZSTD_EndDirective mode) {
    std::size_t remaining = 0;
    do {
      ZSTD_outBuffer ob{chunk.data(), chunk.size(), 0};
      remaining = ZSTD_compressStream2(cctx, &ob, &ib, mode);
      EXPECT_FALSE(ZSTD_isError(remaining)) << ZSTD_getErrorName(remaining);
      if (ZSTD_isError(remaining)) return;
      out.insert(out.end(), chunk.begin(), chunk.begin() + static_cast<std::ptrdiff_t>(ob.pos));
    } while (mode == ZSTD_e_end ? remaining != 0 : ib.pos < ib.size);
  };
  if (feed == ZstdFeed::Whole) {
    ZSTD_inBuffer all{in.data(), in.size(), 0};
    drive(all, ZSTD_e_end);
  } else {
    while (pos < in.size()) {
      const std::size_t n = std::min<std::size_t>(in.size() - pos, 10000);
      ZSTD_inBuffer ib{in.data() + pos, n, 0};
      drive(ib, ZSTD_e_continue);
      pos += n;
    }
    ZSTD_inBuffer end{nullptr, 0, 0};
    drive(end, ZSTD_e_end);
  }
  ZSTD_freeCCtx(cctx);
  EXPECT_EQ(ZSTD_getFrameContentSize(out.data(), out.size()), ZSTD_CONTENTSIZE_UNKNOWN);
  return out;
}

Buf lz4_block(const Buf& in) {
  Buf out(static_cast<std::size_t>(LZ4_compressBound(static_cast<int>(in.size()))));
  const int n = LZ4_compress_default(reinterpret_cast<const char*>(in.data()), reinterpret_cast<char*>(out.data()),
                                     static_cast<int>(in.size()), static_cast<int>(out.size()));
  EXPECT_GT(n, 0);
  out.resize(static_cast<std::size_t>(std::max(n, 0)));
  return out;
}

// ---------------------------------------------------------------- write-ahead logs

Buf v1_log_header() {
  Bytes h;
  h.str(std::string("IQDBWAL\0", 8)).u32(1);
  return h.data();
}

Buf v1_frame(const Buf& body) {
  Bytes f;
  f.u32(static_cast<std::uint32_t>(body.size())).u32(zcrc(body)).append(body);
  return f.data();
}

Buf v2_log_header(std::uint64_t salt, std::uint64_t base_lsn, std::uint32_t required) {
  Bytes h;
  h.str(std::string("IQDBWAL\0", 8)).u32(2).u32(40).u64(salt).u64(base_lsn).u32(required);
  h.u32(zcrc(h.data()));
  return h.data();
}

Buf v2_frame(std::uint64_t salt, const Buf& body) {
  Bytes crc_in;
  crc_in.u64(salt).u32(static_cast<std::uint32_t>(body.size())).append(body);
  Bytes f;
  f.u32(static_cast<std::uint32_t>(body.size())).u32(zcrc(crc_in.data())).append(body);
  return f.data();
}

}  // namespace iqdb::persist::test
