// OpenMPI's handles are macros over addresses of global objects, which Swift cannot import.
// These accessors expose them under their C names; no logic lives here.
#pragma once
#include <mpi.h>

static inline MPI_Comm tessera_mpi_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Comm tessera_mpi_comm_null(void) { return MPI_COMM_NULL; }
static inline MPI_Datatype tessera_mpi_float(void) { return MPI_FLOAT; }
static inline MPI_Datatype tessera_mpi_byte(void) { return MPI_BYTE; }
static inline MPI_Datatype tessera_mpi_int(void) { return MPI_INT; }
static inline MPI_Op tessera_mpi_sum(void) { return MPI_SUM; }
static inline MPI_Op tessera_mpi_max(void) { return MPI_MAX; }
static inline MPI_Op tessera_mpi_min(void) { return MPI_MIN; }
static inline void *tessera_mpi_in_place(void) { return MPI_IN_PLACE; }
static inline MPI_Request tessera_mpi_request_null(void) { return MPI_REQUEST_NULL; }
static inline MPI_Status *tessera_mpi_status_ignore(void) { return MPI_STATUS_IGNORE; }
static inline MPI_Errhandler tessera_mpi_errors_return(void) { return MPI_ERRORS_RETURN; }
static inline int tessera_mpi_thread_serialized(void) { return MPI_THREAD_SERIALIZED; }
static inline int tessera_mpi_thread_multiple(void) { return MPI_THREAD_MULTIPLE; }
static inline int tessera_mpi_success(void) { return MPI_SUCCESS; }
static inline int tessera_mpi_undefined(void) { return MPI_UNDEFINED; }
