# CTest FuzzSeedCorpus.IsTheGeneratorsOutput (tests/CMakeLists.txt): runs the
# seed generator (fuzz/make_seeds.cpp) into SCRATCH and compares what it
# writes with the committed corpus under CORPUS, file by file and name by
# name, for every target it writes. A change of the formats the library
# writes (or a generator that no longer runs) fails here instead of leaving
# the fuzzers seeded with an older layout. The seeds hold zstd and LZ4
# output: the check assumes Debian 12's libzstd and liblz4, which made them.
#   cmake -DGENERATOR=... -DCORPUS=... -DSCRATCH=... -P check_seed_corpus.cmake
file(REMOVE_RECURSE "${SCRATCH}")
execute_process(COMMAND "${GENERATOR}" "${SCRATCH}" RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the seed generator failed (${rc}): ${err}")
endif()
file(GLOB targets RELATIVE "${SCRATCH}" "${SCRATCH}/*")
list(LENGTH targets n_targets)
if(n_targets LESS 6)
  message(FATAL_ERROR "the seed generator wrote ${n_targets} targets (${targets}), at least 6 expected")
endif()
set(bad "")
set(n_files 0)
foreach(t IN LISTS targets)
  file(GLOB generated RELATIVE "${SCRATCH}/${t}" "${SCRATCH}/${t}/*")
  file(GLOB committed RELATIVE "${CORPUS}/${t}" "${CORPUS}/${t}/*")
  if(NOT generated STREQUAL committed)
    list(APPEND bad "${t}: the generator writes [${generated}], fuzz/corpus/${t} holds [${committed}]")
  endif()
  foreach(f IN LISTS generated)
    math(EXPR n_files "${n_files} + 1")
    execute_process(COMMAND "${CMAKE_COMMAND}" -E compare_files "${SCRATCH}/${t}/${f}" "${CORPUS}/${t}/${f}"
                    RESULT_VARIABLE differs)
    if(NOT differs EQUAL 0)
      list(APPEND bad "${t}/${f} differs")
    endif()
  endforeach()
endforeach()
file(REMOVE_RECURSE "${SCRATCH}")
if(bad)
  list(JOIN bad "\n  " lines)
  message(FATAL_ERROR "fuzz/corpus is not what the seed generator writes:\n  ${lines}\n"
                      "Regenerate it: docs/reliability/fuzzing.md, \"Seed corpora\".")
endif()
message(STATUS "${n_files} seed files of ${n_targets} targets are the generator's output")
