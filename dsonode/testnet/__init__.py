"""Local testnets: a pure topology planner (`plan`), the process core of one node
(`process.NodeProcess`) and the supervisor of many (`supervisor.Testnet`)."""

from dsonode.testnet.plan import NodePlan, PlanError, TestnetPlan, plan_from_services, plan_testnet
from dsonode.testnet.process import NodeProcess, NodeProcessError
from dsonode.testnet.supervisor import Testnet, TestnetError, free_port, free_ports

__all__ = [
    "NodePlan",
    "NodeProcess",
    "NodeProcessError",
    "PlanError",
    "Testnet",
    "TestnetError",
    "TestnetPlan",
    "free_port",
    "free_ports",
    "plan_from_services",
    "plan_testnet",
]
