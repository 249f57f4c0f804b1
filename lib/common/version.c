#include "isl.h"

int isl_version_number(void) { return ISL_VERSION_NUMBER; }
const char *isl_version_string(void) { return ISL_VERSION_STRING; }
