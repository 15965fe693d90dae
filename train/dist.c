/* dist.c: the trainer's processes: Open MPI collectives (USE_MPI) or the one-process fallback.
 * Leaves out what is summed and when (main.c, flow_train.c, layers.c). */
#include "dist.h"

#include <stdio.h>
#include <stdlib.h>

/* d as one process without MPI */
static void dist_single(tr_dist *d)
{
    d->rank = 0;
    d->size = 1;
    d->local_size = 1;
    d->mpi = 0;
    d->comm.sum = NULL;
    d->comm.user = NULL;
}

/* 1 when started by an MPI launcher (mpirun, srun with PMIx): its environment says so */
static int launched_by_mpirun(void)
{
    const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK"};
    for (int i = 0; i < 4; i++)
        if (getenv(vars[i])) return 1;
    return 0;
}

#ifdef USE_MPI
#include <mpi.h>

static void mpi_sum_d(double *v, int n, void *user)
{
    (void)user;
    MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
}

int tr_dist_available(void) { return 1; }

int tr_dist_init(tr_dist *d, int *argc, char ***argv)
{
    dist_single(d);
    /* a plain start stays one process without MPI: Open MPI's singleton start would fork a
     * daemon and create shared-memory files, which fails under tight limits (ulimit -f) */
    if (!launched_by_mpirun()) return 0;
    MPI_Init(argc, argv);
    d->mpi = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &d->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &d->size);
    MPI_Comm local;   /* the processes that share this machine's memory (and cores) */
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, d->rank, MPI_INFO_NULL, &local);
    MPI_Comm_size(local, &d->local_size);
    MPI_Comm_free(&local);
    /* errors end the job (the default handler), so a failed collective never returns garbage */
    d->comm.sum = d->size > 1 ? mpi_sum_d : NULL;
    d->comm.user = NULL;
    return 0;
}

void tr_dist_finalize(tr_dist *d)
{
    if (d->mpi) MPI_Finalize();
    d->mpi = 0;
}

/* MPI counts are int: large vectors go in pieces */
#define PIECE (1 << 28)

void tr_dist_bcast(const tr_dist *d, float *v, size_t n)
{
    if (d->size < 2) return;
    for (size_t i = 0; i < n; i += PIECE)
        MPI_Bcast(v + i, (int)(n - i < PIECE ? n - i : PIECE), MPI_FLOAT, 0, MPI_COMM_WORLD);
}

void tr_dist_bcast_d(const tr_dist *d, double *v, int n)
{
    if (d->size > 1) MPI_Bcast(v, n, MPI_DOUBLE, 0, MPI_COMM_WORLD);
}

void tr_dist_sum(const tr_dist *d, float *v, size_t n)
{
    if (d->size < 2) return;
    for (size_t i = 0; i < n; i += PIECE)
        MPI_Allreduce(MPI_IN_PLACE, v + i, (int)(n - i < PIECE ? n - i : PIECE), MPI_FLOAT, MPI_SUM,
                      MPI_COMM_WORLD);
}

int tr_dist_any(const tr_dist *d, int flag)
{
    if (d->size < 2) return flag != 0;
    int in = flag != 0, out = 0;
    MPI_Allreduce(&in, &out, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return out;
}

void tr_dist_abort(const tr_dist *d, int code)
{
    if (d->mpi) MPI_Abort(MPI_COMM_WORLD, code);
    exit(code);
}

#else /* one process */

int tr_dist_available(void) { return 0; }

int tr_dist_init(tr_dist *d, int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    dist_single(d);
    /* started by mpirun (Open MPI, MPICH) as one of several: the processes would each train
     * alone and share the output folder */
    const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"};
    for (int i = 0; i < 2 && launched_by_mpirun(); i++) {
        const char *e = getenv(vars[i]);
        if (e && atoi(e) > 1) {
            fprintf(stderr, "realnvp-train: started as one of %s processes (%s), but this build has no MPI: "
                            "install libopenmpi-dev and rebuild (make), or run one process\n", e, vars[i]);
            return -1;
        }
    }
    return 0;
}

void tr_dist_finalize(tr_dist *d) { (void)d; }
void tr_dist_bcast(const tr_dist *d, float *v, size_t n) { (void)d; (void)v; (void)n; }
void tr_dist_bcast_d(const tr_dist *d, double *v, int n) { (void)d; (void)v; (void)n; }
void tr_dist_sum(const tr_dist *d, float *v, size_t n) { (void)d; (void)v; (void)n; }
int tr_dist_any(const tr_dist *d, int flag) { (void)d; return flag != 0; }
void tr_dist_abort(const tr_dist *d, int code) { (void)d; exit(code); }

#endif
