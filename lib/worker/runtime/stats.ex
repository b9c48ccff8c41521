defmodule Worker.Runtime.Stats do
  @moduledoc """
  What one invocation did besides its result, from
  `Worker.Runtime.invoke_with_stats/3`.
  """

  defstruct dropped_lines: 0, http_ok: 0, http_failed: 0, http_refused: 0

  @typedoc """
  * `dropped_lines` - log lines dropped over the caps or the function's
    rate (`:log_lines_per_s`);
  * `http_ok`, `http_failed`, `http_refused` - outbound HTTP requests that
    got a response, failed (connection, TLS, timeout, body over the cap),
    or were refused by the address policy or a limit.
  """
  @type t :: %__MODULE__{
          dropped_lines: non_neg_integer(),
          http_ok: non_neg_integer(),
          http_failed: non_neg_integer(),
          http_refused: non_neg_integer()
        }
end
