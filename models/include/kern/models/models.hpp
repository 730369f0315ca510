#pragma once
// kern::models umbrella: the registry; each family header is included here as it lands.
#include <kern/models/convnext.hpp>
#include <kern/models/registry.hpp>
#include <kern/models/inception_next.hpp>
#include <kern/models/replknet.hpp>
#include <kern/models/equivariant.hpp>
#include <kern/models/longconv.hpp>
