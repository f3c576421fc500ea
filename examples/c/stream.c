/* Stream text from an edgelm bundle's native C, with nothing but a C compiler.
 *
 *   cc -O3 -I BUNDLE examples/c/stream.c BUNDLE/model.c -o stream -lm
 *   ./stream BUNDLE/weights.bin "def " 200            greedy bytes after the prompt
 *   ./stream BUNDLE/weights.bin "def " 200 0.8 7      sampled at temperature 0.8, seed 7
 *   ./stream BUNDLE/weights.bin "def " 0 logits       the prompt's last logits, one per line
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

static void *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    void *data = NULL;
    if (f && fseek(f, 0, SEEK_END) == 0 && (*n = (size_t)ftell(f)) > 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (data = malloc(*n)) && fread(data, 1, *n, f) != *n) {
        free(data);
        data = NULL;
    }
    if (f) fclose(f);
    return data;
}

static int next_byte(const float *logits, float temperature, unsigned long long *rng) {
    int best = 0;
    for (int i = 1; i < EDGELM_VOCAB; i++) best = logits[i] > logits[best] ? i : best;
    if (temperature <= 0.0f) return best;  /* greedy */
    double p[EDGELM_VOCAB], total = 0.0;
    for (int i = 0; i < EDGELM_VOCAB; i++) total += p[i] = exp((logits[i] - logits[best]) / temperature);
    *rng ^= *rng << 13, *rng ^= *rng >> 7, *rng ^= *rng << 17;  /* xorshift64 */
    double u = (double)(*rng >> 11) / 9007199254740992.0 * total;
    for (int i = 0; i < EDGELM_VOCAB; i++) if ((u -= p[i]) < 0.0) return i;
    return best;
}

int main(int argc, char **argv) {
    size_t n = 0, prompt_len = argc > 2 ? strlen(argv[2]) : 0;
    if (argc < 4 || prompt_len == 0) {
        fprintf(stderr, "usage: %s WEIGHTS PROMPT N [TEMPERATURE SEED | logits]\n", argv[0]);
        return 2;
    }
    void *weights = read_file(argv[1], &n);
    if (weights == NULL || edgelm_check_weights(weights, n) != 0) {
        fprintf(stderr, "error: %s is not this model's weights.bin\n", argv[1]);
        return 2;
    }
    float *state = malloc(EDGELM_STATE_FLOATS * sizeof(float)), logits[EDGELM_VOCAB];
    void *scratch = malloc(edgelm_scratch_bytes(1));
    float temperature = argc > 4 && strcmp(argv[4], "logits") ? (float)atof(argv[4]) : 0.0f;
    unsigned long long rng = argc > 5 ? strtoull(argv[5], NULL, 10) * 2654435761ull + 1 : 1;
    edgelm_init(state);
    edgelm_prefill(weights, state, (const uint8_t *)argv[2], prompt_len, logits, scratch);
    if (argc > 4 && !strcmp(argv[4], "logits"))
        for (int i = 0; i < EDGELM_VOCAB; i++) printf("%.9g\n", logits[i]);
    for (long i = 0; i < atol(argv[3]); i++) {
        int byte = next_byte(logits, temperature, &rng);
        putchar(byte);
        edgelm_step(weights, state, byte, logits, scratch);
    }
    free(scratch), free(state), free(weights);
    return 0;
}
