# Debian packages, made by `cpack -G DEB` in a build directory (scripts/test.sh
# builds them, unpacks them into a scratch root and builds a consumer against
# that root). One package per install component:
#   libiqdb-persist-dev          the static library, its headers, CMake and pkg-config files
#   iqdb-persist                 the command-line tool
#   libiqdb-persist-faiss-dev    the FAISS adapter (when built)
#   libiqdb-persist-hnswlib-dev  the hnswlib adapter (when built)
#   libiqdb-persist-rados-dev    the RADOS component (when built): find_package(iqdb_persist COMPONENTS rados)
# The tool's run-time dependencies come from dpkg-shlibdeps; the -dev
# packages depend on the -dev packages of what a program linking them needs.
set(CPACK_PACKAGE_NAME iqdb-persist)
set(CPACK_PACKAGE_VENDOR "iqdb-persist")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "${PROJECT_DESCRIPTION}")
set(CPACK_PACKAGE_CONTACT "iqdb-persist developers <iqdb-persist@localhost>")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_GENERATOR DEB)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION libdevel)

set(_components dev tools)
set(CPACK_DEBIAN_DEV_PACKAGE_NAME libiqdb-persist-dev)
set(CPACK_COMPONENT_DEV_DESCRIPTION
  "Crash-safe persistence for vector-search indexes: library and headers\n"
  "Atomic, checksummed snapshots and a write-ahead log for vector indexes, with\n"
  "CMake (find_package(iqdb_persist)) and pkg-config (iqdb_persist) files.")
set(CPACK_DEBIAN_DEV_PACKAGE_DEPENDS "libzstd-dev, liblz4-dev, libisal-dev, zlib1g-dev")

set(CPACK_DEBIAN_TOOLS_PACKAGE_NAME iqdb-persist)
set(CPACK_DEBIAN_TOOLS_PACKAGE_SECTION utils)
set(CPACK_COMPONENT_TOOLS_DESCRIPTION
  "Crash-safe persistence for vector-search indexes: command-line tool\n"
  "iqdb-persist inspects, verifies and checkpoints snapshots and write-ahead logs.")
set(CPACK_DEBIAN_TOOLS_PACKAGE_SHLIBDEPS ON)

if(TARGET iqdb_persist_faiss)
  list(APPEND _components faiss)
  set(CPACK_DEBIAN_FAISS_PACKAGE_NAME libiqdb-persist-faiss-dev)
  set(CPACK_COMPONENT_FAISS_DESCRIPTION "Crash-safe persistence for vector-search indexes: FAISS adapter")
  set(CPACK_DEBIAN_FAISS_PACKAGE_DEPENDS "libiqdb-persist-dev (= ${PROJECT_VERSION}), libfaiss-dev")
endif()
if(TARGET iqdb_persist_hnswlib)
  list(APPEND _components hnswlib)
  set(CPACK_DEBIAN_HNSWLIB_PACKAGE_NAME libiqdb-persist-hnswlib-dev)
  set(CPACK_COMPONENT_HNSWLIB_DESCRIPTION "Crash-safe persistence for vector-search indexes: hnswlib adapter")
  set(CPACK_DEBIAN_HNSWLIB_PACKAGE_DEPENDS "libiqdb-persist-dev (= ${PROJECT_VERSION}), libhnswlib-dev")
endif()
if(TARGET iqdb_persist_rados)
  list(APPEND _components rados)
  set(CPACK_DEBIAN_RADOS_PACKAGE_NAME libiqdb-persist-rados-dev)
  set(CPACK_COMPONENT_RADOS_DESCRIPTION
    "Crash-safe persistence for vector-search indexes: snapshots in Ceph RADOS\n"
    "iqdb::persist_rados stores snapshots in a RADOS pool (rados://POOL/NAME), with\n"
    "one fenced writer: find_package(iqdb_persist COMPONENTS rados).")
  set(CPACK_DEBIAN_RADOS_PACKAGE_DEPENDS "libiqdb-persist-dev (= ${PROJECT_VERSION}), librados-dev")
endif()
set(CPACK_COMPONENTS_ALL ${_components})
include(CPack)
