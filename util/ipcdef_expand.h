/*
 * ipcdef_expand.h - expand a protocol .def into C (see ipcdef.h); included
 * once per use, with these set by the includer (and undefined here after):
 *
 *     IPCDEF_FILE      the .def, as a header name ("mailproto.def")
 *     IPCDEF_PREFIX    lower-case prefix of functions and structs (mp)
 *     IPCDEF_UPREFIX   upper-case prefix of type numbers (MP)
 *     IPCDEF_DECLARE   from the protocol's header: constants, the type enum,
 *                      structs, prototypes
 *  or IPCDEF_DEFINE    from its .c: encoders, decoders, the name table
 *
 * Each stage below is a set of IPCDEF_<STAGE>_* macros (ipcdef.h dispatches
 * the .def's lines to them). The name table is a switch over every type: two
 * messages with one number do not compile. No include guard, on purpose.
 */
#include "ipcdef.h"

#define IPCDEF_TYPE(UP)    IPCDEF_PASTE3(IPCDEF_UPREFIX, _, UP)
#define IPCDEF_STRUCT(low) IPCDEF_PASTE3(IPCDEF_PREFIX, _, low)
#define IPCDEF_ENC(low)    IPCDEF_PASTE3(IPCDEF_PREFIX, _encode_, low)
#define IPCDEF_DEC(low)    IPCDEF_PASTE3(IPCDEF_PREFIX, _decode_, low)
#define IPCDEF_QUOTE_(x)   #x
#define IPCDEF_QUOTE(x)    IPCDEF_QUOTE_(x)

/* ignored lines, shared by the stages */
#define IPCDEF_NOTHING_1(a)
#define IPCDEF_NOTHING_2(a, b)
#define IPCDEF_NOTHING_3(a, b, c)

#if defined(IPCDEF_DECLARE)

/* constants */
#define IPCDEF_K_CONST(name, value) enum { name = value };
#define IPCDEF_K_MSG                IPCDEF_NOTHING_3
#define IPCDEF_K_END
#define IPCDEF_K_U32   IPCDEF_NOTHING_1
#define IPCDEF_K_U64   IPCDEF_NOTHING_1
#define IPCDEF_K_STR   IPCDEF_NOTHING_2
#define IPCDEF_K_LINE  IPCDEF_NOTHING_2
#define IPCDEF_K_BYTES IPCDEF_NOTHING_2
#define IPCDEF_STAGE   IPCDEF_K
#include IPCDEF_FILE
#undef IPCDEF_STAGE

/* message types */
#define IPCDEF_T_CONST             IPCDEF_NOTHING_2
#define IPCDEF_T_MSG(UP, low, num) IPCDEF_TYPE(UP) = num,
#define IPCDEF_T_END
#define IPCDEF_T_U32   IPCDEF_NOTHING_1
#define IPCDEF_T_U64   IPCDEF_NOTHING_1
#define IPCDEF_T_STR   IPCDEF_NOTHING_2
#define IPCDEF_T_LINE  IPCDEF_NOTHING_2
#define IPCDEF_T_BYTES IPCDEF_NOTHING_2
#define IPCDEF_STAGE   IPCDEF_T
enum IPCDEF_PASTE(IPCDEF_PREFIX, _type) {
#include IPCDEF_FILE
};
#undef IPCDEF_STAGE

/* one struct per message; a string has its own storage for decoding */
#define IPCDEF_S_CONST             IPCDEF_NOTHING_2
#define IPCDEF_S_MSG(UP, low, num) struct IPCDEF_STRUCT(low) {
#define IPCDEF_S_END  \
    char ipcdef_end_; \
    }                 \
    ;
#define IPCDEF_S_U32(n) uint32_t n;
#define IPCDEF_S_U64(n) uint64_t n;
#define IPCDEF_S_STR(n, cap) \
    const char *n;           \
    char n##_store_[(cap) + 1];
#define IPCDEF_S_LINE IPCDEF_S_STR
#define IPCDEF_S_BYTES(n, cap) \
    const uint8_t *n;          \
    size_t n##_len;
#define IPCDEF_STAGE IPCDEF_S
#include IPCDEF_FILE
#undef IPCDEF_STAGE

/* prototypes */
#define IPCDEF_P_CONST IPCDEF_NOTHING_2
#define IPCDEF_P_MSG(UP, low, num)                                                             \
    int IPCDEF_ENC(low)(struct buf * out, uint32_t id, const struct IPCDEF_STRUCT(low) * msg); \
    int IPCDEF_DEC(low)(struct ipc_msg * m, struct IPCDEF_STRUCT(low) * msg);
#define IPCDEF_P_END
#define IPCDEF_P_U32   IPCDEF_NOTHING_1
#define IPCDEF_P_U64   IPCDEF_NOTHING_1
#define IPCDEF_P_STR   IPCDEF_NOTHING_2
#define IPCDEF_P_LINE  IPCDEF_NOTHING_2
#define IPCDEF_P_BYTES IPCDEF_NOTHING_2
#define IPCDEF_STAGE   IPCDEF_P
#include IPCDEF_FILE
#undef IPCDEF_STAGE
const char *IPCDEF_PASTE(IPCDEF_PREFIX, _type_name)(unsigned type);

#elif defined(IPCDEF_DEFINE)

#define IPCDEF_CAP_OK(cap) _Static_assert((cap) < IPC_FRAME_MAX, "field cap past a frame");

/* encoders */
#define IPCDEF_E_CONST     IPCDEF_NOTHING_2
#define IPCDEF_E_MSG(UP, low, num)                                                            \
    int IPCDEF_ENC(low)(struct buf * out, uint32_t id, const struct IPCDEF_STRUCT(low) * msg) \
    {                                                                                         \
        size_t ipcdef_off = ipc_begin(out, IPCDEF_TYPE(UP), id);                              \
        int ipcdef_err = 0;                                                                   \
        (void)msg;
#define IPCDEF_E_END                                   \
    return ipcdef_finish(out, ipcdef_off, ipcdef_err); \
    }
#define IPCDEF_E_U32(n)  \
    if (ipcdef_err == 0) \
        ipc_add_u32(out, msg->n);
#define IPCDEF_E_U64(n)  \
    if (ipcdef_err == 0) \
        ipc_add_u64(out, msg->n);
#define IPCDEF_E_TEXT(n, cap, rule) \
    IPCDEF_CAP_OK(cap)              \
    if (ipcdef_err == 0)            \
        ipcdef_err = ipcdef_put_text(out, msg->n, (cap), rule);
#define IPCDEF_E_STR(n, cap)  IPCDEF_E_TEXT(n, cap, IPCDEF_TEXT_STR)
#define IPCDEF_E_LINE(n, cap) IPCDEF_E_TEXT(n, cap, IPCDEF_TEXT_LINE)
#define IPCDEF_E_BYTES(n, cap) \
    IPCDEF_CAP_OK(cap)         \
    if (ipcdef_err == 0)       \
        ipcdef_err = ipcdef_put_bytes(out, msg->n, msg->n##_len, (cap));
#define IPCDEF_STAGE IPCDEF_E
#include IPCDEF_FILE
#undef IPCDEF_STAGE

/* decoders: type, every field, nothing after */
#define IPCDEF_D_CONST IPCDEF_NOTHING_2
#define IPCDEF_D_MSG(UP, low, num)                                           \
    int IPCDEF_DEC(low)(struct ipc_msg * m, struct IPCDEF_STRUCT(low) * msg) \
    {                                                                        \
        (void)msg;                                                           \
        if (m->type != IPCDEF_TYPE(UP))                                      \
            return -EPROTO;                                                  \
        m->pos = 0;
#define IPCDEF_D_END       \
    return ipc_get_end(m); \
    }
#define IPCDEF_D_U32(n)              \
    if (ipc_get_u32(m, &msg->n) < 0) \
        return -EPROTO;
#define IPCDEF_D_U64(n)              \
    if (ipc_get_u64(m, &msg->n) < 0) \
        return -EPROTO;
#define IPCDEF_D_TEXT(n, cap, rule)                           \
    if (ipcdef_get_text(m, msg->n##_store_, (cap), rule) < 0) \
        return -EPROTO;                                       \
    msg->n = msg->n##_store_;
#define IPCDEF_D_STR(n, cap)  IPCDEF_D_TEXT(n, cap, IPCDEF_TEXT_STR)
#define IPCDEF_D_LINE(n, cap) IPCDEF_D_TEXT(n, cap, IPCDEF_TEXT_LINE)
#define IPCDEF_D_BYTES(n, cap)                                  \
    if (ipcdef_get_bytes(m, &msg->n, &msg->n##_len, (cap)) < 0) \
        return -EPROTO;
#define IPCDEF_STAGE IPCDEF_D
#include IPCDEF_FILE
#undef IPCDEF_STAGE

/* the name table, for logs */
#define IPCDEF_N_CONST IPCDEF_NOTHING_2
#define IPCDEF_N_MSG(UP, low, num) \
    case IPCDEF_TYPE(UP):          \
        return IPCDEF_QUOTE(IPCDEF_TYPE(UP));
#define IPCDEF_N_END
#define IPCDEF_N_U32   IPCDEF_NOTHING_1
#define IPCDEF_N_U64   IPCDEF_NOTHING_1
#define IPCDEF_N_STR   IPCDEF_NOTHING_2
#define IPCDEF_N_LINE  IPCDEF_NOTHING_2
#define IPCDEF_N_BYTES IPCDEF_NOTHING_2
#define IPCDEF_STAGE   IPCDEF_N
const char *
IPCDEF_PASTE(IPCDEF_PREFIX, _type_name)(unsigned type)
{
    switch (type) {
#include IPCDEF_FILE
    default:
        return "unknown";
    }
}
#undef IPCDEF_STAGE

#else
#error "ipcdef_expand.h: define IPCDEF_DECLARE or IPCDEF_DEFINE"
#endif

#undef IPCDEF_TYPE
#undef IPCDEF_STRUCT
#undef IPCDEF_ENC
#undef IPCDEF_DEC
#undef IPCDEF_FILE
#undef IPCDEF_PREFIX
#undef IPCDEF_UPREFIX
#undef IPCDEF_DECLARE
#undef IPCDEF_DEFINE
