"""`ServingGate` (raytrain.engines.base): a sync's swap waits for the generate call in progress only, never
for the calls that arrive while it waits."""

from __future__ import annotations

import threading
import time

from raytrain.engines.base import ServingGate


def test_a_waiting_swap_goes_before_the_calls_after_it():
    gate, order = ServingGate(), []
    in_call, finish_call = threading.Event(), threading.Event()

    def first_call():
        with gate.call():
            in_call.set()
            finish_call.wait()
            order.append("call in progress")

    def swap():
        with gate.swap():
            order.append("swap")

    def next_call():
        with gate.call():
            order.append("next call")

    threads = [threading.Thread(target=first_call)]
    threads[0].start()
    in_call.wait()
    threads.append(threading.Thread(target=swap))
    threads[1].start()
    while gate._no_swap_waiting.is_set():  # the swap has announced itself and waits for the lock
        time.sleep(0.001)
    threads.append(threading.Thread(target=next_call))
    threads[2].start()
    finish_call.set()
    for t in threads:
        t.join(timeout=10)
    assert order == ["call in progress", "swap", "next call"]
