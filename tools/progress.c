/* Progress bar on stderr (only when it is a terminal): tiles, percent, elapsed, ETA. */
#include "cli.h"

#include <stdio.h>
#include <time.h>
#include <unistd.h>

#define BAR_WIDTH 30
#define REDRAW_SECONDS 0.1

double cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void cli_progress_init(cli_progress *p)
{
    p->enabled = isatty(STDERR_FILENO);
    p->start = cli_now();
    p->last_draw = -1.0;
    p->drawn = 0;
}

void cli_format_duration(double seconds, char *buf, size_t size)
{
    if (!(seconds >= 0) || seconds > 360000.0) {
        snprintf(buf, size, "--:--");
        return;
    }
    long s = (long)(seconds + 0.5);
    if (s >= 3600)
        snprintf(buf, size, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else
        snprintf(buf, size, "%ld:%02ld", s / 60, s % 60);
}

static void draw(cli_progress *p, int64_t done, int64_t total, double now)
{
    double frac = total > 0 ? (double)done / (double)total : 0.0;
    int fill = (int)(frac * BAR_WIDTH);
    char bar[BAR_WIDTH + 1];
    for (int i = 0; i < BAR_WIDTH; i++)
        bar[i] = i < fill ? '#' : '-';
    bar[BAR_WIDTH] = '\0';
    double elapsed = now - p->start;
    char el[32], eta[32];
    cli_format_duration(elapsed, el, sizeof(el));
    if (done > 0)
        cli_format_duration(elapsed / (double)done * (double)(total - done), eta, sizeof(eta));
    else
        cli_format_duration(-1.0, eta, sizeof(eta));
    /* \r + erase to end of line: redraw in place. */
    fprintf(stderr, "\r\033[K[%s] %lld/%lld tiles %3d%%  elapsed %s  ETA %s", bar,
            (long long)done, (long long)total, (int)(frac * 100.0), el, eta);
    fflush(stderr);
    p->drawn = 1;
    p->last_draw = now;
}

int cli_progress_update(void *user, int64_t done, int64_t total)
{
    cli_progress *p = user;
    if (cli_interrupted())
        return 1;
    if (p && p->enabled) {
        double now = cli_now();
        if (done >= total || p->last_draw < 0 || now - p->last_draw >= REDRAW_SECONDS)
            draw(p, done, total, now);
    }
    return 0;
}

void cli_progress_clear(cli_progress *p)
{
    if (p->enabled && p->drawn) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
        p->drawn = 0;
    }
}
