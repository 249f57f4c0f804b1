/* SIGINT / SIGTERM: set a flag that the progress and row callbacks turn into a clean
 * cancellation (temporary files removed). The handler resets itself, so a second signal
 * terminates at once. */
#include "cli.h"

#include <string.h>

static volatile sig_atomic_t interrupted_flag;

static void on_signal(int sig)
{
    (void)sig;
    interrupted_flag = 1;
}

int cli_interrupt_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART | SA_RESETHAND;
    if (sigaction(SIGINT, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0)
        return -1;
    return 0;
}

int cli_interrupted(void) { return interrupted_flag != 0; }
