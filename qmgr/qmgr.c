/*
 * qmgr.c - the queue manager (minimal placeholder): scheduling, shaping,
 *          retries, bounces, the control socket
 *
 * Runs under pmtad: starts, logs, idles on its libuv loop with the sockets
 * pmtad gave its role, follows configuration reloads and exits cleanly on
 * shutdown. The real work arrives with its own issue.
 *
 * Owns: nothing beyond the worker runtime's state (common/worker.c).
 *
 * SECURITY: reads no external input yet.
 */
#include "config.h"

#include "worker.h"

int
main(int argc, char **argv)
{
    worker_init(&argc, &argv, "qmgr");
    return worker_run();
}
