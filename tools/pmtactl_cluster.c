/*
 * pmtactl_cluster.c - `pmtactl show cluster [PATTERN]`: the nodes sharing
 *                     limits through Redis (<cluster>), and the shared state
 *                     of the queues PATTERN matches
 *
 *   cluster: node n1, Redis 127.0.0.1:6390 up, 3 node(s) alive, 1234 round trips
 *   node                 address                 last heartbeat  queues  conns  alive
 *   n1 (this one)        127.0.0.1:2525          0.4 s ago            2      4  yes
 *   ...
 *   queue gmail.com/{default}: backoff until in 118 s: 421 4.7.28 rate limit (node n2)
 *     max-msg-rate 30/s       cluster  slots in hand 2, batch 4
 *     max-smtp-out 4          cluster  held here 1, in the cluster 4 (share if Redis is down: 1)
 *
 * Owns: nothing beyond one response. Text from pmtad is printed through
 * printable() (other nodes' words reach it through Redis).
 */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>

#include <jansson.h>

#include "pmtactl.h"

static json_int_t
num(json_t *o, const char *key)
{
    return json_integer_value(json_object_get(o, key));
}

static void
print_nodes(json_t *nodes)
{
    struct timeval tv;
    json_int_t now_ms;
    json_t *n;
    size_t i;

    gettimeofday(&tv, NULL);
    now_ms = (json_int_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
    printf("%-24s %-22s %15s %7s %6s %6s\n", "node", "address", "last heartbeat", "queues", "conns",
           "alive");
    json_array_foreach(nodes, i, n)
    {
        char *name = printable(get_text(n, "name"), 40),
             *addr = printable(get_text(n, "address"), 40);
        char label[64], ago[32];
        json_int_t seen = now_ms - num(n, "last_heartbeat_ms");

        snprintf(label, sizeof label, "%s%s", name,
                 json_is_true(json_object_get(n, "self")) ? " (this one)" : "");
        snprintf(ago, sizeof ago, "%.1f s ago", (double)(seen > 0 ? seen : 0) / 1000.0);
        printf("%-24s %-22s %15s %7" JSON_INTEGER_FORMAT " %6" JSON_INTEGER_FORMAT " %6s\n", label,
               addr, ago, num(n, "queues"), num(n, "connections"),
               json_is_true(json_object_get(n, "alive")) ? "yes" : "no");
        free(name);
        free(addr);
    }
}

static void
print_limit(json_t *l)
{
    char *basis = printable(get_text(l, "limit"), 60);

    printf("    %-40s %-8s ", basis, get_text(l, "backend"));
    if (json_object_get(l, "held_here"))
        printf("held here %" JSON_INTEGER_FORMAT ", in the cluster %" JSON_INTEGER_FORMAT
               " (share if Redis is down: %" JSON_INTEGER_FORMAT ")\n",
               num(l, "held_here"), num(l, "held_in_cluster"), num(l, "share_if_redis_down"));
    else if (json_object_get(l, "used_here"))
        printf("used here %" JSON_INTEGER_FORMAT ", in the cluster %" JSON_INTEGER_FORMAT "\n",
               num(l, "used_here"), num(l, "used_in_cluster"));
    else if (json_object_get(l, "slots_in_hand"))
        printf("slots in hand %" JSON_INTEGER_FORMAT ", batch %" JSON_INTEGER_FORMAT "\n",
               num(l, "slots_in_hand"), num(l, "batch"));
    else
        printf("\n");
    free(basis);
}

static void
print_queue(json_t *q)
{
    json_t *shared = json_object_get(q, "shared_mode"), *l;
    char *name = printable(get_text(q, "queue"), 200);
    size_t i;

    printf("queue %s: %s", name, get_text(q, "mode"));
    if (json_object_get(q, "backoff_ends_in_s"))
        printf(", back to normal in %" JSON_INTEGER_FORMAT " s", num(q, "backoff_ends_in_s"));
    if (shared) {
        char *why = printable(get_text(shared, "why"), 160),
             *node = printable(get_text(shared, "node"), 64);

        printf(" (cluster: backoff from node %s: %s)", node, why);
        free(why);
        free(node);
    }
    printf("\n");
    json_array_foreach(json_object_get(q, "limits"), i, l) print_limit(l);
    free(name);
}

int
print_cluster(const struct options *o, json_t *response)
{
    json_t *q;
    size_t i;
    char *node = printable(get_text(response, "node"), 64),
         *redis = printable(get_text(response, "redis"), 200);

    (void)o;
    printf("cluster: node %s, Redis %s %s, %" JSON_INTEGER_FORMAT
           " node(s) alive, %" JSON_INTEGER_FORMAT " round trips, %" JSON_INTEGER_FORMAT
           " shared limiters\n",
           node, redis, get_text(response, "state"), num(response, "alive"),
           num(response, "round_trips"), num(response, "limiters_shared"));
    free(node);
    free(redis);
    print_nodes(json_object_get(response, "nodes"));
    json_array_foreach(json_object_get(response, "queues"), i, q) print_queue(q);
    return 0;
}
