// OpenBLAS's CBLAS interface plus its thread-count controls; no logic lives here.
#pragma once
#include <cblas.h>
