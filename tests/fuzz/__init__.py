"""The mutation fuzzer of issue 11: meshd's decoders, cores and input parsers
fed mutations of valid, authenticated seeds.

Targets (targets_wire.py, targets_input.py, targets_relay.py), each with its property:

* `advert_decoder`, `frame_decoder`: decode_advert / decode_frame raise only
  AdvertError / FrameError, whatever the bytes;
* `election_core`, `sync_core`: a real ElectionCore / SyncCore that has
  received every seed; a mutation made without the key (bit flips,
  truncation, extension, field swaps, splices, random bytes), a replay, or a
  reseal under the right key with malformed contents (wrong msgpack shapes,
  out-of-range fields) is rejected with a documented reason and changes no
  state (snapshot.py compares the whole core before and after); reseals of
  valid shapes and reorders raise nothing and take bounded time;
* `control`: the control protocol's request parser and argument checks
  raise only ControlError, whose message names the command and key;
* `config`: the configuration loader, on random TOML-ish text mutations of
  a valid file and on random values per key, raises only ConfigError, each
  problem naming the file (and the key path);
* `dns_idmap`: the DNS relay's id map, on mutated queries and answers,
  raises nothing, counts each input once, and takes an answer only from
  the backend its query went to, with its id and question.

The short version runs in the test suite (test_fuzz.py); the long one is
`python3 -m tests.fuzz --mutations 1000000` from the repository root
(docs/security.md, "The adversarial suite").

Must not: import meshd internals beyond the public codec, core, sealer and
parser APIs (so the harness survives a change of the frame header or the key
schedule), or need root, sockets or a clock.
"""

import sys
from pathlib import Path

_here = Path(__file__).resolve().parent
for _path in (_here.parents[1], _here.parent / "sim"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
