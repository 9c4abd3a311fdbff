/* What every layer shares (see layer.h). */
#include "layer.h"

#include <string.h>

void layer_reset_state(struct layer *l, bool eval)
{
    for (int i = 0; l->ops->state && i < l->n_states; i++) {
        const struct layer_state s = l->ops->state(l, eval, i);
        memset(s.data, 0, sizeof(float) * (size_t)s.rows * (size_t)s.width);
    }
}
