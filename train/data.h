/* data.h: the trainer's data sets: IDX image files (.gz or raw), CIFAR-10 binary batches, and
 * folders of same-sized PNGs, loaded whole into memory as 8-bit (N, C, H, W). Leaves out labels. */
#ifndef RNVP_TRAIN_DATA_H
#define RNVP_TRAIN_DATA_H

#include "realnvp.h"

/* A set of n images of C x H x W 8-bit pixels. */
typedef struct tr_data {
    int n, c, h, w;
    uint8_t *px;          /* (n, c, h, w), owned, malloc'd */
    char name[256];       /* where it came from, for messages and logs */
} tr_data;

/* What a --data path turned out to be. */
enum tr_data_kind { DATA_IDX_DIR, DATA_CIFAR10, DATA_PNG_DIR, DATA_IDX_FILE };
const char *tr_data_kind_name(int kind);

/* Opens the training set (and, when the source has one, its test set) at `path`:
 *   - a directory with train-images-idx3-ubyte[.gz] (Fashion-MNIST, MNIST): train and t10k-images;
 *   - a directory with data_batch_1.bin .. data_batch_5.bin (CIFAR-10 binary): train and test_batch.bin;
 *   - a directory of *.png files of one size: train only;
 *   - an IDX image file: train only.
 * On success train->px (and test->px when a test set was found, else test->n = 0) are owned by
 * the caller (tr_data_free). On failure both are empty, and err names the file and the problem. */
enum rnvp_status tr_data_open(tr_data *train, tr_data *test, int *kind, const char *path,
                              rnvp_error *err);
/* Loads one explicit file or folder (an IDX file, a CIFAR-10 .bin batch, or a PNG folder). */
enum rnvp_status tr_data_load(tr_data *d, const char *path, rnvp_error *err);
/* Reads one IDX image file (magic 0x00000803: unsigned bytes, 3 dimensions n, rows, cols), gzip
 * or raw. Errors name the file: missing, truncated, wrong magic, sizes that do not match. */
enum rnvp_status tr_idx_read(tr_data *d, const char *path, rnvp_error *err);
/* Moves the last `k` images of d into out (a validation split); d keeps the first n - k. */
enum rnvp_status tr_data_split(tr_data *d, tr_data *out, int k, rnvp_error *err);
void tr_data_free(tr_data *d);

#endif
