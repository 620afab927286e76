"""dnn-dgn-dlgn: the ReLU network (DNN) against the deep gated network (DGN) and the deep linearly gated
network (DLGN), per architecture family, with the ratio DLGN / DNN of "Disentangling deep neural networks
with rectified linear units using duality" (arXiv 2110.03403: the DLGN "recovers more than 83.5%").

CPU (digits; FC, small conv and residual nets):  python analysis/dnn_dgn_dlgn.py
C4GAP and ResNet-110 on CIFAR-10 (GPU):           python analysis/dnn_dgn_dlgn.py --config analysis/configs/dnn-dgn-dlgn.json
  CIFAR-100:  add --dataset cifar100;  VGG-16:  add --set conv_preset=VGG16
Any flag of `npk run` works here (--out, --force, --quick, --set key=value).
"""
import sys

from npk.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "dnn-dgn-dlgn", *sys.argv[1:]]))
