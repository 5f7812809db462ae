"""The sampling plan behind MixtureSampler, without torch: seeded draws, state round trips,
disjoint rank slices of one global plan, and realised frequencies against the mixture."""

from __future__ import annotations

import json
import unittest
from collections import Counter

from mos_client import MixturePlan
from mos_client.plan import _Permutation

from _support import chi_square, chi_square_p

SIZES = [300, 500, 200, 1000]
WEIGHTS = [0.4, 0.3, 0.2, 0.1]


def plan(seed: int = 11, rank: int = 0, world: int = 1, **kw: object) -> MixturePlan:
    p = MixturePlan(SIZES, seed=seed, rank=rank, world_size=world, **kw)  # type: ignore[arg-type]
    p.set_mixture(0, WEIGHTS)
    return p


class PlanTest(unittest.TestCase):
    def test_the_same_seed_gives_the_same_stream_and_another_seed_another(self) -> None:
        p, q, r = plan(11), plan(11), plan(12)
        a = [p.draw() for _ in range(500)]
        self.assertEqual(a, [q.draw() for _ in range(500)])
        self.assertNotEqual(a, [r.draw() for _ in range(500)])

    def test_each_epoch_of_a_dataset_is_a_permutation(self) -> None:
        for n in (1, 2, 3, 5, 64, 65, 1000):
            first = [_Permutation(n, 5)[x] for x in range(n)]
            self.assertEqual(sorted(first), list(range(n)), n)
        p = MixturePlan([7, 3], seed=2)
        p.set_mixture(0, [1.0, 0.0])
        draws = [p.draw() for _ in range(21)]
        epochs = [sorted(j for _, j in draws[k * 7:(k + 1) * 7]) for k in range(3)]
        self.assertTrue(all(e == list(range(7)) for e in epochs), epochs)
        self.assertNotEqual(draws[:7], draws[7:14])  # a new order each epoch
        self.assertTrue(all(i == 0 for i, _ in draws))  # weight 0: never drawn

    def test_an_empty_dataset_is_never_drawn_whatever_its_weight(self) -> None:
        p = MixturePlan([10, 0, 10], seed=1)
        p.set_mixture(0, [0.2, 0.6, 0.2])
        counts = Counter(p.draw()[0] for _ in range(2000))
        self.assertEqual(counts[1], 0)
        with self.assertRaises(ValueError):
            p.set_mixture(1, [0.0, 1.0, 0.0])
            p.draw()

    def test_a_state_round_trip_continues_the_same_stream(self) -> None:
        p = plan(5)
        for _ in range(137):
            p.draw()
        p.set_mixture(1, [0.1, 0.1, 0.1, 0.7], at_round=150)  # due after the checkpoint
        state = json.loads(json.dumps(p.state_dict()))  # through JSON, as a checkpoint is
        expected = [p.draw() for _ in range(300)]
        q = MixturePlan(SIZES, seed=5)
        q.load_state_dict(state)
        self.assertEqual([q.draw() for _ in range(300)], expected)
        self.assertEqual(q.version, 1)

    def test_the_state_at_an_earlier_round_serves_a_reading_ahead_loader(self) -> None:
        p = plan(9)
        stream = [p.draw() for _ in range(40)]
        p.set_mixture(1, [0.7, 0.1, 0.1, 0.1])  # adopted at round 40, ahead of consumption
        stream += [p.draw() for _ in range(60)]
        state = p.state_dict(at_round=25)  # the consumer had used 25 draws
        q = MixturePlan(SIZES, seed=9)
        q.load_state_dict(json.loads(json.dumps(state)))
        self.assertEqual([q.draw() for _ in range(75)], stream[25:])
        self.assertEqual(q.version, 1)
        # Later requests go on from there; going back is refused (the state is not kept).
        self.assertEqual(p.state_dict(at_round=60)["round"], 60)
        with self.assertRaises(ValueError):
            p.state_dict(at_round=30)
        with self.assertRaises(ValueError):
            p.state_dict(at_round=101)

    def test_a_state_of_other_datasets_or_ranks_is_refused(self) -> None:
        state = plan(1).state_dict()
        with self.assertRaises(ValueError) as cm:
            MixturePlan([1, 2], seed=1).load_state_dict(state)
        self.assertIn("sizes", str(cm.exception))
        with self.assertRaises(ValueError) as cm:
            MixturePlan(SIZES, seed=1, world_size=2).load_state_dict(state)
        self.assertIn("world_size", str(cm.exception))

    def test_a_round_already_drawn_cannot_change(self) -> None:
        p = plan()
        p.draw()
        p.draw()
        with self.assertRaises(ValueError):
            p.set_mixture(1, WEIGHTS, at_round=1)

    def test_drawing_without_a_mixture_says_what_to_do(self) -> None:
        with self.assertRaises(RuntimeError) as cm:
            MixturePlan(SIZES).draw()
        self.assertIn("set_mixture", str(cm.exception))

    def test_ranks_draw_disjoint_slices_of_one_global_plan(self) -> None:
        single = plan(21)
        stream = [single.draw() for _ in range(600)]
        single_switch = single.set_mixture(1, [0.05, 0.05, 0.45, 0.45])
        stream += [single.draw() for _ in range(600)]
        for world in (2, 3):
            ranks = [plan(21, rank=r, world=world) for r in range(world)]
            per_rank = [[p.draw() for _ in range(600 // world)] for p in ranks]
            # The ranks agree on the switch round (they all reached it), as the controller does.
            at = max(p.round for p in ranks)
            self.assertEqual(at * world, single_switch)
            for p in ranks:
                p.set_mixture(1, [0.05, 0.05, 0.45, 0.45], at_round=at)
            for r, p in enumerate(ranks):
                per_rank[r] += [p.draw() for _ in range(600 // world)]
            # Rank r's k-th draw is global position k * world + r of the single-process plan.
            interleaved = [per_rank[k % world][k // world] for k in range(1200)]
            self.assertEqual(interleaved, stream, world)
            # Within an epoch of each dataset no two ranks see the same example (the k-th
            # draw of dataset i in the global order belongs to its epoch k // size).
            seen = [set() for _ in range(world)]
            drawn = Counter()
            for k, (i, j) in enumerate(interleaved):
                seen[k % world].add((i, drawn[i] // SIZES[i], j))
                drawn[i] += 1
            self.assertEqual(sum(len(s) for s in seen), 1200)  # no repeat within an epoch
            for a in range(world):
                for b in range(a + 1, world):
                    self.assertFalse(seen[a] & seen[b], (world, a, b))
            self.assertGreater(max(drawn[i] / SIZES[i] for i in drawn), 1.0)  # epochs wrapped
            # Every rank holds the same global state after the same number of its own draws.
            states = [p.state_dict() for p in ranks]
            self.assertTrue(all(s == states[0] for s in states))

    def test_realised_frequencies_follow_the_mixture(self) -> None:
        p = plan(33)
        n = 20000
        counts = Counter(p.draw()[0] for _ in range(n))
        observed = [counts[i] for i in range(len(SIZES))]
        stat, dof = chi_square(observed, WEIGHTS)
        self.assertGreater(chi_square_p(stat, dof), 1e-3, (observed, stat))
        # The test has power: the same counts against a mixture 0.03 away are rejected.
        stat, dof = chi_square(observed, [0.37, 0.33, 0.2, 0.1])
        self.assertLess(chi_square_p(stat, dof), 1e-6, (observed, stat))

    def test_the_chi_square_tail_matches_known_values(self) -> None:
        # Reference quantiles: P(X >= 3.841) = 0.05 (1 dof), P(X >= 11.345) = 0.01 (3 dof),
        # P(X >= 2.0) = exp(-1) (2 dof, exactly), P(X >= 150) for 100 dof (mpmath, 15 digits).
        self.assertAlmostEqual(chi_square_p(3.841459, 1), 0.05, places=5)
        self.assertAlmostEqual(chi_square_p(11.344867, 3), 0.01, places=5)
        self.assertAlmostEqual(chi_square_p(2.0, 2), 0.36787944117144233, places=12)
        self.assertAlmostEqual(chi_square_p(150.0, 100), 0.000903932042354009, places=12)

    def test_epochs_of_own_draws(self) -> None:
        p = plan(4, epoch_len=10)
        first = list(p.iter_epoch())
        self.assertEqual(len(first), 10)
        it = p.iter_epoch()
        part = [next(it) for _ in range(4)]
        state = p.state_dict()
        rest = list(it)
        self.assertEqual(len(rest), 6)
        q = MixturePlan(SIZES, seed=4, epoch_len=10)
        q.load_state_dict(state)
        self.assertEqual(list(q.iter_epoch()), rest)  # a resumed epoch yields only its rest
        self.assertEqual(len(part), 4)


if __name__ == "__main__":
    unittest.main()
