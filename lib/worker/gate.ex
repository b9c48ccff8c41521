defmodule Worker.Gate do
  @moduledoc """
  Counted slots that come back however their holder ends.

  A slot is held through a ticket, a native resource in the holder's heap.
  It is given back by `leave/1`, or when the holder exits for any reason,
  `:kill` included: its heap goes, and the ticket with it. So no process can
  keep a slot by dying, and no `after` clause is needed for correctness.

  Units may be held for a key (a function, `key/1`): no key holds more
  than the gate's share, so that one function can never take every slot
  from the others. `Worker.Admission` puts a queue in front of one gate;
  the others refuse at once when full.
  """

  alias Worker.Native

  @type t :: reference()
  @type ticket :: reference()
  @typedoc "What units are held for: a function's `key/1`, or `nil` for nothing."
  @type key :: non_neg_integer() | nil

  @doc """
  A gate of `max` units, of which one key may hold `share` (default: all).
  """
  @spec new(non_neg_integer(), non_neg_integer()) :: t()
  def new(max, share \\ nil) when is_integer(max) and max >= 0,
    do: Native.gate_new(max, share || max)

  @doc """
  The share of `max` that one key may hold: `percent` of it, at least 1.
  """
  @spec share(non_neg_integer(), 1..100) :: non_neg_integer()
  def share(max, percent), do: max(div(max * percent, 100), min(max, 1))

  @doc """
  The key of `id` (a function's `Worker.Function.id/1`, say): 64 bits of a
  hash salted at boot, so that nobody can pick a name whose key is another
  function's, and two functions share a key by chance once in 2^64.
  """
  @spec key(term()) :: non_neg_integer()
  def key(id) do
    {a, b} = salt()

    :erlang.phash2({a, id}, 4_294_967_296) * 4_294_967_296 +
      :erlang.phash2({b, id}, 4_294_967_296)
  end

  @doc false
  # Makes the salt of keys, once per VM; the application does it at start,
  # before any key is made.
  def init do
    unless :persistent_term.get({__MODULE__, :salt}, nil) do
      salt = {:crypto.strong_rand_bytes(16), :crypto.strong_rand_bytes(16)}
      :persistent_term.put({__MODULE__, :salt}, salt)
    end

    :ok
  end

  defp salt do
    with nil <- :persistent_term.get({__MODULE__, :salt}, nil) do
      init()
      :persistent_term.get({__MODULE__, :salt})
    end
  end

  @doc """
  A ticket for `weight` units, held for `key`; `nil` when they are not free
  (or someone waits in the gate's queue); `:share` when `key` holds its
  share: the gate's, or `share` when given (never more than the gate's).
  The ticket belongs to the calling process.
  """
  @spec enter(t(), non_neg_integer(), key(), non_neg_integer() | nil) :: ticket() | nil | :share
  def enter(gate, weight \\ 1, key \\ nil, share \\ nil),
    do: Native.gate_enter(gate, weight, key, share)

  @doc """
  Moves a ticket that another process made into the calling one: the slot
  now goes back when this process ends. `nil` if it was given back already.
  """
  @spec take(ticket()) :: ticket() | nil
  def take(ticket), do: Native.gate_take(ticket)

  @doc "Gives a ticket's units back now. `true` if it still held them."
  @spec leave(ticket()) :: boolean()
  def leave(ticket), do: Native.gate_leave(ticket)

  @doc """
  For a queue's server: a ticket for one unit held for `key`, for a waiter,
  even while others wait; `nil` if none is free, `:share` if `key` holds
  its share. The waiter takes it (`take/1`).
  """
  @spec reserve(t(), key()) :: ticket() | nil | :share
  def reserve(gate, key \\ nil), do: Native.gate_reserve(gate, key)

  @doc """
  For a queue's server: `waiting` callers are queued (so `enter/2` refuses
  while above zero), and `server` is told `:"$fl_gate_free"` when a unit
  is given back meanwhile.
  """
  @spec queue(t(), non_neg_integer(), pid()) :: :ok
  def queue(gate, waiting, server), do: Native.gate_queue(gate, waiting, server)

  @doc """
  `%{used: n, max: n, waiting: n, share: n, keys: n}`: `keys`, how many
  keys hold units now.
  """
  @spec info(t()) :: %{
          used: integer(),
          max: integer(),
          waiting: integer(),
          share: integer(),
          keys: integer()
        }
  def info(gate) do
    {used, max, waiting, share, keys} = Native.gate_info(gate)
    %{used: used, max: max, waiting: waiting, share: share, keys: keys}
  end

  @doc "Units `key` holds now."
  @spec held(t(), non_neg_integer()) :: non_neg_integer()
  def held(gate, key), do: Native.gate_held(gate, key)
end
