// <hnswlib/hnswlib.h> for the adapter's library, with hnswlib's non-inline
// definitions made weak.
//
// hnswlib 0.6.x defines, without `inline`, on x86 with SSE (its default):
//   hnswlib.h     cpuid, xgetbv, AVXCapable, AVX512Capable  (global namespace)
//   space_l2.h    hnswlib::L2SqrSIMD16Ext                    (a function pointer)
//   space_ip.h    hnswlib::InnerProductSIMD16Ext, InnerProductSIMD4Ext,
//                 InnerProductDistanceSIMD16Ext, InnerProductDistanceSIMD4Ext
// Every translation unit that includes hnswlib.h defines them, so two such
// units do not link. Declared weak here, before hnswlib.h defines them, the
// library's copies give way to those of a user's translation unit that
// includes hnswlib.h itself (to build a graph to adopt, or to use graph()):
// the same code, from the same header.
#pragma once

#include <cstdint>

#if !defined(NO_MANUAL_VECTORIZATION) && defined(__SSE__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((weak)) void cpuid(int32_t cpuInfo[4], int32_t eax, int32_t ecx);
__attribute__((weak)) uint64_t xgetbv(unsigned int index);
__attribute__((weak)) bool AVXCapable();
__attribute__((weak)) bool AVX512Capable();

namespace hnswlib {
using IqdbWeakDistFunc = float (*)(const void*, const void*, const void*);  // DISTFUNC<float>
__attribute__((weak)) extern IqdbWeakDistFunc L2SqrSIMD16Ext;
__attribute__((weak)) extern IqdbWeakDistFunc InnerProductSIMD16Ext;
__attribute__((weak)) extern IqdbWeakDistFunc InnerProductSIMD4Ext;
__attribute__((weak)) extern IqdbWeakDistFunc InnerProductDistanceSIMD16Ext;
__attribute__((weak)) extern IqdbWeakDistFunc InnerProductDistanceSIMD4Ext;
}  // namespace hnswlib
#endif

#include <hnswlib/hnswlib.h>
