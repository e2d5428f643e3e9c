/*
 * qmgr_acct_json.c - an accounting record as one JSON object on one line
 *                    (<acct-file> format json, and every <acct-webhook>)
 *
 *     {"type":"d","timeLogged":"2026-11-27 20:41:05+0000","orig":"a@b",...}
 *
 * The same fields as the CSV line of the same output (records and
 * record-fields choose them, header_X and userString included), in the same
 * order, named as the CSV header names its columns; only the fields of the
 * record's own type appear. Values are the CSV's text (cleaned the same
 * way: control bytes a space, invalid UTF-8 '?', bounded) as JSON strings;
 * dlvSize and totalSecondsQueued, and the times with iso-times no, are
 * numbers (null when the CSV has them empty).
 *
 * Owns nothing beyond one record. SECURITY: every value is peer text made
 * valid UTF-8 before jansson escapes it; no value can add a field or a line.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "msg.h"

#include "qmgr_acct_int.h"

/* numeric - is FIELD a number in JSON (as F writes it)? */
static bool
numeric(const struct acct_file *f, int field)
{
    switch (acct_fields[field].kind) {
    case FK_SIZE:
    case FK_TOTAL_SECONDS:
        return true;
    case FK_TIME_LOGGED:
    case FK_TIME_QUEUED:
    case FK_TIME_FIRST_ATTEMPT:
        return !f->iso_times;
    default:
        return false;
    }
}

/* value_json - TEXT (LEN bytes, cleaned) as a JSON string, or a number for a NUMERIC field */
static json_t *
value_json(const char *text, size_t len, bool is_number)
{
    if (!is_number)
        return json_stringn(text, len);
    return len ? json_integer(strtoll(text, NULL, 10)) : json_null();
}

/* acct_format_json - see qmgr_acct_int.h */
void
acct_format_json(const struct acct_file *f, struct buf *b, const struct qmgr_acct_record *r,
                 time_t logged)
{
    json_t *obj = json_object();
    struct buf v = BUF_INIT;
    char *line;

    json_object_set_new(obj, "type", json_string(acct_type_names[r->type]));
    for (size_t i = 0; i < f->ncolumns; i++) {
        const struct column *col = &f->columns[i];
        char name[80];

        buf_reset(&v);
        if (col->field >= 0 && f->field_on[r->type][col->field]) {
            acct_field_text(f, &v, col->field, r, logged);
            json_object_set_new(obj, acct_fields[col->field].name,
                                value_json(v.data ? v.data : "", v.len, numeric(f, col->field)));
        } else if (col->field < 0 && f->header_on[r->type][col->header]) {
            acct_header_text(f, &v, col->header, r, false);
            snprintf(name, sizeof name, "header_%s", f->headers[col->header]);
            json_object_set_new(obj, name, json_stringn(v.data ? v.data : "", v.len));
        }
    }
    buf_free(&v);
    line = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(obj);
    if (line == NULL)
        msg_fatal("out of memory for an accounting record");
    buf_append_str(b, line);
    buf_append_str(b, "\n");
    free(line);
}
