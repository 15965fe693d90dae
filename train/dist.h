/* dist.h: data-parallel training over processes: MPI when bin/realnvp-train is built with USE_MPI
 * (the Makefile does so when it finds mpicc), else one process. Leaves out the passes' own sums (layers.h tr_comm).
 *
 * Every process runs the same loop on its share of each global batch; rank 0 alone reads
 * nothing different but writes every file. All functions are collective (every process calls
 * them in the same order) except tr_dist_abort. */
#ifndef RNVP_TRAIN_DIST_H
#define RNVP_TRAIN_DIST_H

#include "layers.h"

#include <stddef.h>

typedef struct tr_dist {
    int rank, size;   /* this process and how many there are (0 and 1 without MPI) */
    int local_size;   /* how many of them share this machine (1 without MPI) */
    int mpi;          /* 1 when MPI was initialised */
    tr_comm comm;     /* the sums of the batch statistics (comm.sum NULL with one process) */
} tr_dist;

/* Starts MPI when built with it (MPI_Init) and fills d. Without MPI, a launch by mpirun with
 * more than one process is refused: returns -1 after saying why. */
int tr_dist_init(tr_dist *d, int *argc, char ***argv);
void tr_dist_finalize(tr_dist *d);
/* 1 when built with MPI */
int tr_dist_available(void);
/* v (n floats) <- rank 0's v */
void tr_dist_bcast(const tr_dist *d, float *v, size_t n);
/* v (n doubles) <- rank 0's v */
void tr_dist_bcast_d(const tr_dist *d, double *v, int n);
/* v (n floats) <- the sum over the processes, in place */
void tr_dist_sum(const tr_dist *d, float *v, size_t n);
/* 1 when flag is non-zero on any process */
int tr_dist_any(const tr_dist *d, int flag);
/* Ends every process of the job with status code (after a fatal error on this one). */
void tr_dist_abort(const tr_dist *d, int code);

#endif
