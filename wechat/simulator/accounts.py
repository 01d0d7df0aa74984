"""Several simulated accounts behind one API host, as real WeChat serves every account from
api.weixin.qq.com: the token endpoints find the account by appid, the other calls by the
access_token. The first account is the default one, which callers that name none address."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from wechat.simulator.clock import SimClock
from wechat.simulator.config import AccountConfig
from wechat.simulator.state import SimulatorState


class UnknownAccount(LookupError):
    """The admin API named an AppID the simulator does not serve."""


class DuplicateAccount(ValueError):
    """An account with this AppID is already served."""


class Accounts:
    """The default account's state plus any others, all on one clock.

    Lookups walk a short list: the simulator serves a handful of accounts, and with only the
    default one every lookup returns at once (the single-account hot path is unchanged).
    """

    def __init__(self, default: SimulatorState, others: Sequence[AccountConfig] = ()) -> None:
        self.default = default
        self.startup = tuple(others)
        self._others: list[SimulatorState] = []
        for config in others:
            self.add(config)

    def __iter__(self) -> Iterator[SimulatorState]:
        yield self.default
        yield from self._others

    def __len__(self) -> int:
        return 1 + len(self._others)

    def add(self, config: AccountConfig) -> SimulatorState:
        """Serve one more account: no followers or templates yet, callbacks off, its own
        tokens, quota, counters, messages and faults; the clock is the default account's."""
        if self.find(config.app_id) is not None:
            raise DuplicateAccount(config.app_id)
        state = SimulatorState(config, seed_demo=False, clock=self.default.clock)
        self._others.append(state)
        return state

    def find(self, app_id: str | None) -> SimulatorState | None:
        """The account with this AppID (as configured now), or None."""
        for state in self:
            if state.config.app_id == app_id:
                return state
        return None

    def get(self, app_id: str | None) -> SimulatorState:
        """The admin API's account: the default one when no AppID is named."""
        if app_id is None or app_id == "":
            return self.default
        state = self.find(app_id)
        if state is None:
            raise UnknownAccount(app_id)
        return state

    def by_appid(self, app_id: object) -> SimulatorState:
        """The account a token request is for. An unknown (or missing) appid goes to the default
        account, which answers it 40013 (41002) exactly as the single-account simulator did."""
        if self._others and isinstance(app_id, str):
            state = self.find(app_id)
            if state is not None:
                return state
        return self.default

    def by_token(self, token: str | None) -> SimulatorState:
        """The account that issued `token` (real WeChat knows the account from the token
        alone). A token nobody issued goes to the default account, which answers 40001."""
        if self._others and token:
            for state in self:
                if token in state.tokens.tokens:
                    return state
        return self.default

    @property
    def clock(self) -> SimClock:
        return self.default.clock

    def reset(self, *, everything: bool = False) -> None:
        """Reset every account (and the shared clock once). `everything` also forgets the
        accounts added through the admin API, keeping those the simulator started with."""
        if everything:
            self._others = []
            self.default.reset(everything=True)
            for config in self.startup:
                self.add(config)
            return
        for state in self:
            state.reset()
