#ifndef VIRTPORT_CLIBXML2_SHIM_H
#define VIRTPORT_CLIBXML2_SHIM_H
/* Debian builds libxml2 with ICU; its UErrorCode clashes with Foundation's ICU. */
#include <libxml/xmlversion.h>
#undef LIBXML_ICU_ENABLED
#include <libxml/parser.h>
#include <libxml/parserInternals.h>
#include <libxml/tree.h>
#include <libxml/xmlerror.h>

/* xmlFree is a global function pointer Swift 6 rejects as not concurrency-safe. */
static inline void vp_xml_free(void *p) { xmlFree(p); }

/* xmlGenericErrorFunc is variadic, so Swift cannot write one: a handler that drops the message. */
static void vp_xml_generic_error_ignore(void *ctx, const char *msg, ...) {
    (void)ctx;
    (void)msg;
}

/* Stops libxml2 printing to stderr from the calling thread (the setting is per thread).
 * Errors of a parse are collected through the context's structured handler instead. */
static inline void vp_xml_silence_generic_errors(void) {
    xmlSetGenericErrorFunc(NULL, vp_xml_generic_error_ignore);
}
#endif
