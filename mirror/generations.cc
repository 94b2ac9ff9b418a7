#include "mirror/generations.h"

#include <openssl/rand.h>

#include <algorithm>
#include <cstdio>

#include "base/check.h"

namespace mirror {

uint64_t NewGeneration() {
  uint64_t gen = 0;
  while (gen == 0) {
    CHECK(RAND_bytes(reinterpret_cast<unsigned char*>(&gen), sizeof(gen)) == 1);
  }
  return gen;
}

void RememberGeneration(Generations& gens, uint64_t gen) {
  if (gen == 0 || std::find(gens.history.begin(), gens.history.end(), gen) != gens.history.end()) {
    return;
  }
  gens.history.insert(gens.history.begin(), gen);
  if (gens.history.size() > Generations::kHistoryLength) {
    gens.history.resize(Generations::kHistoryLength);
  }
}

void DivergeFromPeer(Generations& gens) {
  RememberGeneration(gens, gens.current);
  gens.current = NewGeneration();
  gens.current_shared = false;
}

const char* SyncKindName(SyncKind kind) {
  switch (kind) {
    case SyncKind::kNone:
      return "none";
    case SyncKind::kIncremental:
      return "incremental";
    case SyncKind::kFull:
      return "full";
    case SyncKind::kPeerAhead:
      return "peer-ahead";
    case SyncKind::kSplitBrain:
      return "split-brain";
    case SyncKind::kUnrelated:
      return "unrelated";
  }
  return "?";
}

bool IsRefusal(SyncKind kind) {
  return kind == SyncKind::kPeerAhead || kind == SyncKind::kSplitBrain ||
         kind == SyncKind::kUnrelated;
}

std::string GenerationText(uint64_t gen) {
  char buf[19];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(gen));
  return buf;
}

namespace {

bool Contains(const std::vector<uint64_t>& list, uint64_t gen) {
  return gen != 0 && std::find(list.begin(), list.end(), gen) != list.end();
}

// Every non-zero identifier a copy has carried, as far as it remembers.
std::vector<uint64_t> Known(const Generations& g) {
  std::vector<uint64_t> all = g.history;
  all.push_back(g.current);
  all.push_back(g.bitmap);
  std::erase(all, 0);
  return all;
}

}  // namespace

SyncDecision DecideSync(const Generations& p, const Generations& s, bool secondary_up_to_date,
                        bool any_marked) {
  if (s.current == 0) {
    return {SyncKind::kFull, "the secondary has never been synchronised"};
  }
  if (s.current == p.current) {
    if (secondary_up_to_date && !any_marked) {
      return {SyncKind::kNone, "both copies are at generation " + GenerationText(p.current)};
    }
    return {SyncKind::kIncremental,
            "same generation " + GenerationText(p.current) +
                "; resyncing the regions marked when the copies last parted"};
  }
  if (p.bitmap != 0 && s.current == p.bitmap) {
    return {SyncKind::kIncremental, "the primary wrote without the secondary since generation " +
                                        GenerationText(p.bitmap)};
  }
  if (s.bitmap != 0 && s.bitmap == p.current) {
    return {SyncKind::kPeerAhead,
            "the secondary wrote without the primary since generation " +
                GenerationText(p.current) +
                " (it was primary meanwhile); its acknowledged writes would be lost"};
  }
  if (p.bitmap != 0 && p.bitmap == s.bitmap) {
    return {SyncKind::kSplitBrain, "split brain: both copies wrote without the other since "
                                   "generation " +
                                       GenerationText(p.bitmap)};
  }
  if (Contains(p.history, s.current)) {
    return {SyncKind::kFull, "the secondary is at old generation " + GenerationText(s.current) +
                                 ", older than the primary's bitmap reaches"};
  }
  if (Contains(s.history, p.current) || Contains(Known(s), p.current)) {
    return {SyncKind::kPeerAhead, "the secondary has moved on from the primary's generation " +
                                      GenerationText(p.current)};
  }
  for (uint64_t gen : Known(p)) {
    if (Contains(Known(s), gen)) {
      return {SyncKind::kSplitBrain, "split brain: the copies share generation " +
                                         GenerationText(gen) + " but both moved on since"};
    }
  }
  return {SyncKind::kUnrelated, "the copies share no generation: unrelated data"};
}

}  // namespace mirror
