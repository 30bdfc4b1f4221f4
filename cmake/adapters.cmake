# Optional adapters that persist indexes of other libraries (docs/ADAPTERS.md):
#
#   iqdb::persist_faiss     FaissIndex over a faiss::Index          (needs FAISS, e.g. libfaiss-dev)
#   iqdb::persist_hnswlib   HnswlibIndex over hnswlib's HNSW graph  (needs libhnswlib-dev)
#
# Each is built only when its library is found, so the core library builds
# without either. IQDB_PERSIST_WITH_FAISS / IQDB_PERSIST_WITH_HNSWLIB:
# AUTO (default: when found), ON (required: fail when not found), OFF.
# Installed, each comes with its own CMake package, so a consumer of
# iqdb_persist never needs FAISS or hnswlib:
#
#   find_package(iqdb_persist_faiss CONFIG REQUIRED)     # also finds iqdb_persist and faiss
#   target_link_libraries(app PRIVATE iqdb::persist_faiss)
#
# Included from the top-level CMakeLists.txt right after add_subdirectory(src).

set(IQDB_PERSIST_WITH_FAISS AUTO CACHE STRING "Build the FAISS adapter: AUTO (when FAISS is found), ON, OFF")
set_property(CACHE IQDB_PERSIST_WITH_FAISS PROPERTY STRINGS AUTO ON OFF)
set(IQDB_PERSIST_WITH_HNSWLIB AUTO CACHE STRING "Build the hnswlib adapter: AUTO (when hnswlib is found), ON, OFF")
set_property(CACHE IQDB_PERSIST_WITH_HNSWLIB PROPERTY STRINGS AUTO ON OFF)

# _mode: AUTO, ON or OFF for an option's value.
function(_iqdb_adapter_mode option out)
  string(TOUPPER "${${option}}" v)
  if(v STREQUAL "AUTO" OR v STREQUAL "")
    set(${out} AUTO PARENT_SCOPE)
  elseif(${option})
    set(${out} ON PARENT_SCOPE)
  else()
    set(${out} OFF PARENT_SCOPE)
  endif()
endfunction()

function(_iqdb_adapter_not_found mode what hint)
  if(mode STREQUAL "ON")
    message(FATAL_ERROR "${what} was required (ON) but not found: ${hint}")
  endif()
  message(STATUS "${what} not found: not built (${hint})")
endfunction()

include(CMakePackageConfigHelpers)

# Install an adapter target with a package of its own: <name>Config.cmake
# finds iqdb_persist and the adapter's dependencies (`deps`: CMake code), then
# includes the exported target and runs `post` (CMake code). Everything goes
# into the install component named after the adapter ("faiss", "hnswlib"),
# with the adapter's header (which the core's install leaves out), so a
# Debian package of its own holds it (cmake/packaging.cmake).
function(_iqdb_install_adapter target package deps post)
  if(NOT IQDB_PERSIST_INSTALL)
    return()
  endif()
  string(REPLACE "iqdb_persist_" "" component ${package})
  set(dest ${CMAKE_INSTALL_LIBDIR}/cmake/${package})
  install(TARGETS ${target} EXPORT ${package}_targets COMPONENT ${component}
    ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
    LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
    INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
  install(FILES ${PROJECT_SOURCE_DIR}/include/iqdb/persist/adapters/${component}.hpp
    DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/iqdb/persist/adapters COMPONENT ${component})
  install(EXPORT ${package}_targets NAMESPACE iqdb:: FILE ${package}Targets.cmake DESTINATION ${dest}
    COMPONENT ${component})
  set(config "${CMAKE_CURRENT_BINARY_DIR}/${package}Config.cmake")
  file(WRITE ${config}
    "# ${package}: an optional adapter of iqdb_persist (docs/ADAPTERS.md).\n"
    "include(CMakeFindDependencyMacro)\n"
    "find_dependency(iqdb_persist ${PROJECT_VERSION} CONFIG PATHS \"\${CMAKE_CURRENT_LIST_DIR}/../iqdb_persist\")\n"
    "${deps}\n"
    "include(\"\${CMAKE_CURRENT_LIST_DIR}/${package}Targets.cmake\")\n"
    "${post}\n")
  write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/${package}ConfigVersion.cmake
    VERSION ${PROJECT_VERSION} COMPATIBILITY SameMajorVersion)
  install(FILES ${config} ${CMAKE_CURRENT_BINARY_DIR}/${package}ConfigVersion.cmake DESTINATION ${dest}
    COMPONENT ${component})
endfunction()

# ---------------------------------------------------------------- FAISS

_iqdb_adapter_mode(IQDB_PERSIST_WITH_FAISS _iqdb_faiss_mode)
if(_iqdb_faiss_mode STREQUAL "OFF")
  message(STATUS "FAISS adapter not built (IQDB_PERSIST_WITH_FAISS=${IQDB_PERSIST_WITH_FAISS})")
else()
  # FAISS's exported target links OpenMP::OpenMP_CXX without finding it.
  find_package(OpenMP COMPONENTS CXX QUIET)
  if(OpenMP_CXX_FOUND)
    find_package(faiss CONFIG QUIET)
  endif()
  if(OpenMP_CXX_FOUND AND faiss_FOUND AND TARGET faiss)
    add_library(iqdb_persist_faiss STATIC
      ${PROJECT_SOURCE_DIR}/src/adapters/faiss_index.cpp
      ${PROJECT_SOURCE_DIR}/src/adapters/faiss_stream_guard.cpp)
    add_library(iqdb::persist_faiss ALIAS iqdb_persist_faiss)
    set_target_properties(iqdb_persist_faiss PROPERTIES OUTPUT_NAME iqdb_persist_faiss
      POSITION_INDEPENDENT_CODE ON EXPORT_NAME persist_faiss)
    target_include_directories(iqdb_persist_faiss PRIVATE ${PROJECT_SOURCE_DIR}/src)
    target_link_libraries(iqdb_persist_faiss
      PUBLIC iqdb_persist faiss
      PRIVATE $<BUILD_INTERFACE:iqdb_persist_warnings>)
    message(STATUS "FAISS ${faiss_VERSION} found: building the FAISS adapter (iqdb::persist_faiss)")
    _iqdb_install_adapter(iqdb_persist_faiss iqdb_persist_faiss
      "find_dependency(OpenMP COMPONENTS CXX)\nfind_dependency(faiss CONFIG)" "")
  else()
    _iqdb_adapter_not_found(${_iqdb_faiss_mode} "FAISS (with OpenMP)" "apt-get install libfaiss-dev")
  endif()
endif()

# ---------------------------------------------------------------- hnswlib

_iqdb_adapter_mode(IQDB_PERSIST_WITH_HNSWLIB _iqdb_hnswlib_mode)
if(_iqdb_hnswlib_mode STREQUAL "OFF")
  message(STATUS "hnswlib adapter not built (IQDB_PERSIST_WITH_HNSWLIB=${IQDB_PERSIST_WITH_HNSWLIB})")
else()
  find_path(IQDB_HNSWLIB_INCLUDE_DIR hnswlib/hnswalg.h DOC "Directory holding hnswlib/hnswlib.h")
  if(IQDB_HNSWLIB_INCLUDE_DIR)
    # A static library: hnswlib's headers (which define functions without
    # `inline`) are compiled into it, and the adapter's header includes none
    # of them (src/adapters/hnswlib_include.hpp). They are system headers
    # (their warnings are not ours); consumers keep them on their include
    # path for the adopting constructor and graph().
    add_library(iqdb_persist_hnswlib STATIC ${PROJECT_SOURCE_DIR}/src/adapters/hnswlib_index.cpp)
    add_library(iqdb::persist_hnswlib ALIAS iqdb_persist_hnswlib)
    set_target_properties(iqdb_persist_hnswlib PROPERTIES OUTPUT_NAME iqdb_persist_hnswlib
      POSITION_INDEPENDENT_CODE ON EXPORT_NAME persist_hnswlib)
    target_include_directories(iqdb_persist_hnswlib PRIVATE ${PROJECT_SOURCE_DIR}/src)
    target_include_directories(iqdb_persist_hnswlib SYSTEM PUBLIC $<BUILD_INTERFACE:${IQDB_HNSWLIB_INCLUDE_DIR}>)
    target_link_libraries(iqdb_persist_hnswlib
      PUBLIC iqdb_persist
      PRIVATE $<BUILD_INTERFACE:iqdb_persist_warnings>)
    # hnswlib 0.6.2's SSE search code reads, to prefetch, one slot past the
    # end of a link list: harmless on hardware, a heap-buffer-overflow to
    # ASan. Sanitized builds compile its scalar code (as the tests and fuzz
    # targets that include hnswlib.h do).
    if(CMAKE_CXX_FLAGS MATCHES "sanitize=address")
      target_compile_definitions(iqdb_persist_hnswlib PRIVATE NO_MANUAL_VECTORIZATION)
    endif()
    message(STATUS "hnswlib found in ${IQDB_HNSWLIB_INCLUDE_DIR}: building the hnswlib adapter (iqdb::persist_hnswlib)")
    # The installed package finds the consumer's hnswlib headers itself.
    set(_deps [=[
find_path(IQDB_HNSWLIB_INCLUDE_DIR hnswlib/hnswalg.h)
if(NOT IQDB_HNSWLIB_INCLUDE_DIR)
  set(iqdb_persist_hnswlib_FOUND FALSE)
  set(iqdb_persist_hnswlib_NOT_FOUND_MESSAGE "hnswlib headers (hnswlib/hnswalg.h) not found")
  return()
endif()]=])
    set(_post [=[
set_property(TARGET iqdb::persist_hnswlib APPEND PROPERTY INTERFACE_INCLUDE_DIRECTORIES "${IQDB_HNSWLIB_INCLUDE_DIR}")]=])
    _iqdb_install_adapter(iqdb_persist_hnswlib iqdb_persist_hnswlib "${_deps}" "${_post}")
  else()
    _iqdb_adapter_not_found(${_iqdb_hnswlib_mode} "hnswlib" "apt-get install libhnswlib-dev")
  endif()
endif()
