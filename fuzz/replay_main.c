/* A main() for the harnesses when libFuzzer is not available (or to replay a corpus under a
 * plain sanitizer build): runs LLVMFuzzerTestOneInput on every file named on the command line,
 * and on every file inside each directory named. Prints how many inputs ran. */
#define _POSIX_C_SOURCE 200809L /* opendir/readdir/stat: walking a corpus directory */

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static long replayed = 0;

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    long len;
    uint8_t *buf;
    if (!f) {
        fprintf(stderr, "replay: cannot open %s\n", path);
        return 1;
    }
    if (fseek(f, 0, SEEK_END) != 0 || (len = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return 1;
    }
    buf = (uint8_t *)malloc(len ? (size_t)len : 1);
    if (!buf || fread(buf, 1, (size_t)len, f) != (size_t)len) {
        fclose(f);
        free(buf);
        return 1;
    }
    fclose(f);
    LLVMFuzzerTestOneInput(buf, (size_t)len);
    free(buf);
    replayed++;
    return 0;
}

int main(int argc, char **argv)
{
    int bad = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (argv[i][0] == '-') {
            continue; /* libFuzzer-style flags are accepted and ignored */
        }
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "replay: no such file or directory: %s\n", argv[i]);
            bad = 1;
            continue;
        }
        if (S_ISDIR(st.st_mode)) {
            DIR *d = opendir(argv[i]);
            struct dirent *e;
            if (!d) {
                bad = 1;
                continue;
            }
            while ((e = readdir(d)) != NULL) {
                char path[4096];
                struct stat fst;
                if (e->d_name[0] == '.') {
                    continue;
                }
                snprintf(path, sizeof path, "%s/%s", argv[i], e->d_name);
                if (stat(path, &fst) == 0 && S_ISREG(fst.st_mode)) {
                    bad |= run_file(path);
                }
            }
            closedir(d);
        } else {
            bad |= run_file(argv[i]);
        }
    }
    printf("replayed %ld inputs\n", replayed);
    return bad;
}
