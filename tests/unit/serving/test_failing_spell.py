"""The controller's retried rounds say a failure once per way it fails, not every round."""

from __future__ import annotations

import redis

from serve_ab.serving.failing_spell import FailingSpell


def test_a_spell_is_said_at_its_start_at_each_new_error_class_and_at_its_end():
    spell = FailingSpell()
    refused, timed_out = redis.ConnectionError("refused"), redis.TimeoutError("timed out")
    said = [spell.failed(err) for err in (refused, refused, timed_out, refused, timed_out, refused)]
    # A store flapping between two errors: two lines, not one at each of five switches.
    assert said == [True, False, True, False, False, False]
    assert spell.worked() is True  # the end of the spell is said
    assert spell.worked() is False  # a round that worked after one that worked: nothing to say
    assert spell.failed(refused) is True  # a new spell is said again
