/* chat-bench: the load generator and checker (issue 7). Until it lands this binary only says so,
 * so nothing mistakes it for a measurement. */
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        printf("usage: chat-bench (not implemented yet: see docs/architecture.md, status)\n");
        return 0;
    }
    fprintf(stderr, "chat-bench: not implemented yet (see docs/architecture.md, status)\n");
    return 2;
}
