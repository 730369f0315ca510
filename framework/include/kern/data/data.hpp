#pragma once
// kern::data umbrella: IDX files, datasets (TensorDataset, FashionMNIST), DataLoader,
// transforms.
#include <kern/data/dataloader.hpp>
#include <kern/data/dataset.hpp>
#include <kern/data/distributed_sampler.hpp>
#include <kern/data/idx.hpp>
#include <kern/data/random_affine.hpp>
#include <kern/data/sequence_tasks.hpp>
#include <kern/data/transforms.hpp>
