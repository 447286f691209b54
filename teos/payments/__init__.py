"""Paid subscriptions: payment channels from users to the tower (docs/PAYMENTS.md).

- ``state``/``store``: what the tower keeps per channel, changed only by compare-and-swap;
- ``handler``: opening channels and validating payments (the income validator is ``income``), granting
  registrations exactly once per payment through the ``GrantLedger`` seam;
- ``claims``: when and what to claim, and a claim's life on chain as a pure state machine;
- ``chain``: the narrow view of bitcoind the checks need (``gettxout`` and the tip);
- ``config``: the operator's terms; ``tower_key``: the tower's payment key;
- ``ledger``: grants through the Gatekeeper; ``service``: the use cases, split between the API workers
  (``PaymentGateway``) and the main process (``PaymentCore``) across the worker channel;
- ``runner`` (with ``spends``): the claims on the engine thread, block by block, failures contained;
- ``report``/``operator``: what ``teos-cli`` and ``/metrics`` see and do. (Channel openings are limited
  per address with the registrations' limiter, ``teos.api.limits``.)
"""
