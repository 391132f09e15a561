# Shared by run_consumer.cmake and run_consumer_dist.cmake: building a consumer of an installed
# kronfac (at PREFIX) from SRC into BIN, by find_package or with pkg-config's flags.

# A fresh BIN, configured and built from SRC's CMakeLists.txt against PREFIX; `what` names it.
function(consumer_build_with_find_package what)
  file(REMOVE_RECURSE ${BIN})
  file(MAKE_DIRECTORY ${BIN})
  execute_process(COMMAND ${CMAKE_COMMAND} -S ${SRC} -B ${BIN} -DCMAKE_PREFIX_PATH=${PREFIX}
                  RESULT_VARIABLE rc)
  if(rc)
    message(FATAL_ERROR "configuring the ${what} failed")
  endif()
  execute_process(COMMAND ${CMAKE_COMMAND} --build ${BIN} RESULT_VARIABLE rc)
  if(rc)
    message(FATAL_ERROR "building the ${what} failed")
  endif()
endfunction()

# A fresh BIN, and in `out_flags` the compile and link flags pkg-config gives for `package`
# installed under PREFIX, in `out_libdir` its library folder.
function(consumer_pkg_config package out_flags out_libdir)
  file(REMOVE_RECURSE ${BIN})
  file(MAKE_DIRECTORY ${BIN})
  find_program(PKG_CONFIG pkg-config REQUIRED)
  file(GLOB pcdirs ${PREFIX}/lib*/pkgconfig ${PREFIX}/lib/*/pkgconfig)
  string(REPLACE ";" ":" pcpath "${pcdirs}")
  set(ENV{PKG_CONFIG_PATH} "${pcpath}")
  execute_process(COMMAND ${PKG_CONFIG} --cflags --libs ${package} OUTPUT_VARIABLE flags
                  OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE rc)
  if(rc)
    message(FATAL_ERROR "pkg-config does not know ${package} (PKG_CONFIG_PATH=${pcpath})")
  endif()
  separate_arguments(flags UNIX_COMMAND "${flags}")
  execute_process(COMMAND ${PKG_CONFIG} --variable=libdir ${package} OUTPUT_VARIABLE libdir
                  OUTPUT_STRIP_TRAILING_WHITESPACE)
  set(${out_flags} "${flags}" PARENT_SCOPE)
  set(${out_libdir} "${libdir}" PARENT_SCOPE)
endfunction()
