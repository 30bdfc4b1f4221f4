# Optional component: snapshots in a Ceph RADOS pool (docs/DISTRIBUTED.md).
#
#   iqdb::persist_rados    RadosSnapshotStore, save_to_rados / load_from_rados
#                          (needs librados: apt-get install librados-dev)
#
# IQDB_PERSIST_WITH_RADOS: AUTO (default: built when librados is found), ON
# (required: fail when not found), OFF. Tests: tests/rados (label `rados`),
# skipped unless CEPH_CONF and IQDB_RADOS_POOL name a cluster and a pool:
#   scripts/ceph-cluster.sh run -- ctest --test-dir BUILD -L rados
#
# Included from the top-level CMakeLists.txt after cmake/adapters.cmake
# (whose helper functions it uses) and after tests/.

set(IQDB_PERSIST_WITH_RADOS AUTO CACHE STRING "Build the RADOS component: AUTO (when librados is found), ON, OFF")
set_property(CACHE IQDB_PERSIST_WITH_RADOS PROPERTY STRINGS AUTO ON OFF)

_iqdb_adapter_mode(IQDB_PERSIST_WITH_RADOS _iqdb_rados_mode)
if(_iqdb_rados_mode STREQUAL "OFF")
  message(STATUS "RADOS component not built (IQDB_PERSIST_WITH_RADOS=${IQDB_PERSIST_WITH_RADOS})")
else()
  # librados ships no pkg-config file or CMake package in Debian 12.
  find_path(IQDB_RADOS_INCLUDE_DIR rados/librados.h DOC "Directory holding rados/librados.h")
  find_library(IQDB_RADOS_LIBRARY rados DOC "librados")
  if(IQDB_RADOS_INCLUDE_DIR AND IQDB_RADOS_LIBRARY)
    add_library(iqdb_persist_rados STATIC
      ${PROJECT_SOURCE_DIR}/src/rados/change_notify.cpp
      ${PROJECT_SOURCE_DIR}/src/rados/head_record.cpp
      ${PROJECT_SOURCE_DIR}/src/rados/rados_store.cpp
      ${PROJECT_SOURCE_DIR}/src/rados/stripe_reader.cpp
      ${PROJECT_SOURCE_DIR}/src/rados/stripe_writer.cpp
      ${PROJECT_SOURCE_DIR}/src/rados/rados_log.cpp
      ${PROJECT_SOURCE_DIR}/src/rados/rados_storage.cpp
      ${PROJECT_SOURCE_DIR}/src/rados/writer_lock.cpp)
    add_library(iqdb::persist_rados ALIAS iqdb_persist_rados)
    set_target_properties(iqdb_persist_rados PROPERTIES OUTPUT_NAME iqdb_persist_rados
      POSITION_INDEPENDENT_CODE ON EXPORT_NAME persist_rados)
    target_include_directories(iqdb_persist_rados PRIVATE ${PROJECT_SOURCE_DIR}/src)
    # librados's headers are not ours to warn about.
    target_include_directories(iqdb_persist_rados SYSTEM PRIVATE ${IQDB_RADOS_INCLUDE_DIR})
    target_link_libraries(iqdb_persist_rados
      PUBLIC iqdb_persist
      PRIVATE $<BUILD_INTERFACE:${IQDB_RADOS_LIBRARY}> $<INSTALL_INTERFACE:rados>
              $<BUILD_INTERFACE:iqdb_persist_warnings>)
    message(STATUS "librados found (${IQDB_RADOS_LIBRARY}): building the RADOS component (iqdb::persist_rados)")
    # The CLI (tools/, added before this file) reads rados:// locations.
    if(TARGET iqdb_persist_cli)
      target_link_libraries(iqdb_persist_cli PRIVATE iqdb::persist_rados)
      target_compile_definitions(iqdb_persist_cli PRIVATE IQDB_PERSIST_CLI_HAVE_RADOS=1)
    endif()
    # Installed as component "rados" of the iqdb_persist CMake package
    # (find_package(iqdb_persist COMPONENTS rados); cmake/iqdb_persistConfig.cmake.in)
    # and Debian package libiqdb-persist-rados-dev (cmake/packaging.cmake).
    if(IQDB_PERSIST_INSTALL)
      install(TARGETS iqdb_persist_rados EXPORT iqdb_persist_rados_targets COMPONENT rados
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
      install(FILES ${PROJECT_SOURCE_DIR}/include/iqdb/persist/rados.hpp
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/iqdb/persist COMPONENT rados)
      install(EXPORT iqdb_persist_rados_targets NAMESPACE iqdb:: FILE iqdb_persist_radosTargets.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/iqdb_persist COMPONENT rados)
    endif()
    # PersistedIndex on RADOS against plain librados (docs/PERFORMANCE.md, "RADOS").
    if(TARGET iqdb_bench_util)
      add_executable(iqdb_rados_wal_bench ${PROJECT_SOURCE_DIR}/bench/rados_wal_bench.cpp)
      target_include_directories(iqdb_rados_wal_bench SYSTEM PRIVATE ${IQDB_RADOS_INCLUDE_DIR})
      target_link_libraries(iqdb_rados_wal_bench PRIVATE iqdb::persist_rados iqdb_bench_util ${IQDB_RADOS_LIBRARY}
        Threads::Threads iqdb_persist_warnings)
      set_target_properties(iqdb_rados_wal_bench PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bench)
    endif()
    if(TARGET iqdb_replica_bench)  # replica lag on a pool too (bench/replica_bench.cpp)
      target_link_libraries(iqdb_replica_bench PRIVATE iqdb::persist_rados)
      target_compile_definitions(iqdb_replica_bench PRIVATE IQDB_BENCH_WITH_RADOS)
    endif()
    if(IQDB_PERSIST_BUILD_TESTS)
      # The tests use librados's C API, as the component does, to read and damage objects.
      add_subdirectory(${PROJECT_SOURCE_DIR}/tests/rados ${PROJECT_BINARY_DIR}/tests/rados)
    endif()
  else()
    _iqdb_adapter_not_found(${_iqdb_rados_mode} "librados" "apt-get install librados-dev")
  endif()
endif()
