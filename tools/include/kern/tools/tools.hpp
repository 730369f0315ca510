#pragma once
// kern::tools umbrella: empirical NTK, Hessian spectra, the training-dynamics tracker and
// the coordinate check.
#include <kern/tools/coord_check.hpp>
#include <kern/tools/hessian.hpp>
#include <kern/tools/ntk.hpp>
#include <kern/tools/preconditioned.hpp>
#include <kern/tools/tracker.hpp>
