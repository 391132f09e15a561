# Builds examples/consumer_dist against an installed kronfac with its MPI module, through
# find_package(kronfac COMPONENTS dist) (MODE=cmake) or pkg-config kronfac_dist (MODE=pkgconfig),
# and runs it under MPIRUN (a list: the launcher and its flags).
include(${CMAKE_CURRENT_LIST_DIR}/consumer_common.cmake)
if(MODE STREQUAL "cmake")
  consumer_build_with_find_package("find_package(kronfac COMPONENTS dist) consumer")
else()
  consumer_pkg_config(kronfac_dist flags libdir)
  execute_process(COMMAND ${CC} -std=c99 -Wall -Wextra -Wpedantic -Werror ${SRC}/consumer_dist.c
                          ${flags} -o ${BIN}/consumer_dist RESULT_VARIABLE rc)
  if(rc)
    message(FATAL_ERROR "compiling the pkg-config dist consumer failed")
  endif()
endif()
execute_process(COMMAND ${MPIRUN} ${BIN}/consumer_dist RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "the dist consumer program failed (${rc})")
endif()
