# Runs one example program as its header comment tells a user to: in a new,
# empty directory, twice. A crash example logs and "crashes" on its first run
# and recovers and checks what it recovered on the second; the others check
# their result on every run. Each run must exit 0.
#   cmake -DEXAMPLE=path/to/example -DDIR=scratch/dir -P run_example.cmake
if(NOT EXAMPLE OR NOT DIR)
  message(FATAL_ERROR "usage: cmake -DEXAMPLE=PROGRAM -DDIR=DIRECTORY -P run_example.cmake")
endif()
file(REMOVE_RECURSE "${DIR}")
file(MAKE_DIRECTORY "${DIR}")
foreach(run first second)
  execute_process(COMMAND "${EXAMPLE}" "${DIR}/example.iqdb" RESULT_VARIABLE status)
  if(NOT status EQUAL 0)
    message(FATAL_ERROR "${EXAMPLE}: the ${run} run exited with ${status}")
  endif()
endforeach()
file(REMOVE_RECURSE "${DIR}")
