defmodule Worker.Gate do
  @moduledoc """
  Counted slots that come back however their holder ends.

  A slot is held through a ticket, a native resource in the holder's heap.
  It is given back by `leave/1`, or when the holder exits for any reason,
  `:kill` included: its heap goes, and the ticket with it. So no process can
  keep a slot by dying, and no `after` clause is needed for correctness.

  `Worker.Admission` puts a queue in front of one gate; the others refuse
  at once when full.
  """

  alias Worker.Native

  @type t :: reference()
  @type ticket :: reference()

  @doc "A gate of `max` units."
  @spec new(non_neg_integer()) :: t()
  def new(max) when is_integer(max) and max >= 0, do: Native.gate_new(max)

  @doc """
  A ticket for `weight` units, or `nil` when they are not free (or someone
  waits in the gate's queue). The ticket belongs to the calling process.
  """
  @spec enter(t(), non_neg_integer()) :: ticket() | nil
  def enter(gate, weight \\ 1), do: Native.gate_enter(gate, weight)

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
  For a queue's server: a ticket for one unit, for its first waiter, even
  while others wait; `nil` if none is free. The waiter takes it (`take/1`).
  """
  @spec reserve(t()) :: ticket() | nil
  def reserve(gate), do: Native.gate_reserve(gate)

  @doc """
  For a queue's server: `waiting` callers are queued (so `enter/2` refuses
  while above zero), and `server` is told `:"$fl_gate_free"` when a unit
  is given back meanwhile.
  """
  @spec queue(t(), non_neg_integer(), pid()) :: :ok
  def queue(gate, waiting, server), do: Native.gate_queue(gate, waiting, server)

  @doc "`%{used: n, max: n, waiting: n}`."
  @spec info(t()) :: %{used: integer(), max: integer(), waiting: integer()}
  def info(gate) do
    {used, max, waiting} = Native.gate_info(gate)
    %{used: used, max: max, waiting: waiting}
  end
end
