"""Local testnets: a pure topology planner (`plan`) and a process supervisor (`supervisor`)."""

from dsonode.testnet.plan import NodePlan, PlanError, TestnetPlan, plan_from_services, plan_testnet
from dsonode.testnet.supervisor import Testnet, TestnetError, free_port, free_ports

__all__ = [
    "NodePlan",
    "PlanError",
    "Testnet",
    "TestnetError",
    "TestnetPlan",
    "free_port",
    "free_ports",
    "plan_from_services",
    "plan_testnet",
]
