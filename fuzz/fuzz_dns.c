/*
 * fuzz_dns.c - fuzz target: DNS answers as smtp-out reads them
 * (dns_answer_parse in smtp-out/mxdns_answer.c)
 *
 * The input is a name server's reply, any bytes: byte 0 picks the query
 * type (MX, A, AAAA, TLSA, TXT), byte 1 c-ares's outcome of the query
 * (0 success, else one of its error codes), the rest is the reply. Checked
 * beyond the sanitizers, which is what mxdns_int.h promises: the
 * status is one smtp-out knows; success has records and a failure has a
 * reason; the record count is within its cap; names and TXT strings end
 * within their fields and within their length limits; MX preferences fit
 * in 16 bits; addresses are of the family asked for; TLSA data fits.
 */
#include <arpa/nameser.h>
#include <ares.h>
#include <netinet/in.h>
#include <string.h>

#include "fuzz.h"
#include "mxdns_int.h"

static void
check_answer(const struct dns_answer *a, int type)
{
    static const size_t caps[] = { MXDNS_MAX_MX, MXDNS_MAX_ADDRS, MXDNS_MAX_ADDRS, MXDNS_MAX_TLSA,
                                   MXDNS_MAX_TXT };
    size_t cap = caps[type == ns_t_mx     ? 0
                      : type == ns_t_a    ? 1
                      : type == ns_t_aaaa ? 2
                      : type == ns_t_txt  ? 4
                                          : 3];

    FUZZ_CHECK(a->status >= MXDNS_OK && a->status <= MXDNS_CANCELLED);
    FUZZ_CHECK(memchr(a->why, 0, sizeof a->why) != NULL);
    FUZZ_CHECK(a->status == MXDNS_OK ? a->n >= 1 : *a->why != 0);
    FUZZ_CHECK(a->n <= cap);
    for (size_t i = 0; a->status == MXDNS_OK && i < a->n; i++) {
        if (type == ns_t_mx) {
            FUZZ_CHECK(a->u.mx[i].pref <= 65535);
            FUZZ_CHECK(memchr(a->u.mx[i].name, 0, sizeof a->u.mx[i].name) != NULL);
        } else if (type == ns_t_a || type == ns_t_aaaa) {
            FUZZ_CHECK(a->u.addr[i].ss_family == (type == ns_t_a ? AF_INET : AF_INET6));
        } else if (type == ns_t_txt) {
            FUZZ_CHECK(memchr(a->u.txt[i], 0, sizeof a->u.txt[i]) != NULL);
        } else {
            FUZZ_CHECK(a->u.tlsa[i].len <= sizeof a->u.tlsa[i].data);
        }
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const int types[] = { ns_t_mx, ns_t_a, ns_t_aaaa, DNS_T_TLSA, ns_t_txt };
    static const int statuses[] = { ARES_SUCCESS,   ARES_ENODATA,  ARES_EFORMERR, ARES_ESERVFAIL,
                                    ARES_ENOTFOUND, ARES_EREFUSED, ARES_EBADRESP, ARES_ETIMEOUT };
    static struct dns_answer ans;
    static int init;
    int type;

    if (!init++)
        fuzz_quiet_logs();
    if (size < 2)
        return 0;
    type = types[data[0] % 5];
    memset(&ans, 0, sizeof ans); /* as mxdns.c hands it over (xcalloc) */
    dns_answer_parse(&ans, "example.com", type, statuses[data[1] % 8], data + 2, (int)(size - 2));
    check_answer(&ans, type);
    return 0;
}
